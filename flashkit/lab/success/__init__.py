"""The success metrics, measured: the original pipeline's resilience policy (``before``), the
flashcard pipeline as ``flashkit process`` runs it (``after``), a peer-library policy (``peer``)
and the official openai SDK with its defaults (``sdk``), on the same two-stage workload against
the same simulated upstream, each on its own virtual clock, deterministic from a seed.
``before``, ``peer`` and ``sdk`` need the ``bench`` extra.

- :mod:`~flashkit.lab.success.workload`: the words and their two requests;
- :mod:`~flashkit.lab.success.original`: the original pipeline's policy, reproduced;
- :mod:`~flashkit.lab.success.policies`: the ``after`` and ``peer`` policies, and
  :func:`run_policy`;
- :mod:`~flashkit.lab.success.sdk`: the ``sdk`` policy (``openai.AsyncOpenAI``);
- :mod:`~flashkit.lab.success.metrics`: the metrics, the ideal time and the verdicts;
- :mod:`~flashkit.lab.success.report`: :func:`run_success_metrics`, all of it at once;
- :mod:`~flashkit.lab.success.versus`: ``after`` against the ``peer`` across seeds and
  workloads (:func:`versus_peer`), judged against the peer targets;
- :mod:`~flashkit.lab.success.plots`: its figures.

Why it is measured this way: ``docs/design/success-metrics.md``.

>>> report = run_success_metrics("flaky", words=200, seed=1)    # doctest: +SKIP
>>> report.metrics[["error_rate", "p99_time_to_card", "breaker_trips"]]  # doctest: +SKIP
>>> report.verdicts.to_frame()                                   # doctest: +SKIP
"""

from flashkit.lab.success._record import PolicyRun, Process
from flashkit.lab.success.metrics import (
    TargetVerdict,
    TargetVerdicts,
    at_least,
    ideal_seconds,
    sent_in_retry_after,
    target_verdicts,
    time_to_card,
)
from flashkit.lab.success.original import (
    ORIGINAL_RPM,
    OriginalAPIError,
    OriginalCircuitBreaker,
    OriginalCircuitOpen,
    OriginalTokenBucket,
    parse_stage2,
)
from flashkit.lab.success.plots import plot_latency_cdf, plot_load
from flashkit.lab.success.policies import (
    POLICIES,
    VIRTUAL_EPOCH,
    AfterLimiter,
    Policy,
    after_settings,
    run_policy,
)
from flashkit.lab.success.report import (
    COMPARED,
    SuccessReport,
    compare_policies,
    run_success_metrics,
)
from flashkit.lab.success.versus import (
    P99_TARGETS,
    REQUESTS_TARGET,
    WORKLOADS,
    versus_peer,
    versus_summary,
)
from flashkit.lab.success.workload import API_KEY, BASE_URL, Word, Workload, load_words

__all__ = [
    "after_settings",
    "AfterLimiter",
    "API_KEY",
    "at_least",
    "BASE_URL",
    "compare_policies",
    "COMPARED",
    "ideal_seconds",
    "load_words",
    "ORIGINAL_RPM",
    "OriginalAPIError",
    "OriginalCircuitBreaker",
    "OriginalCircuitOpen",
    "OriginalTokenBucket",
    "P99_TARGETS",
    "parse_stage2",
    "plot_latency_cdf",
    "plot_load",
    "POLICIES",
    "Policy",
    "PolicyRun",
    "Process",
    "REQUESTS_TARGET",
    "run_policy",
    "run_success_metrics",
    "sent_in_retry_after",
    "SuccessReport",
    "target_verdicts",
    "TargetVerdict",
    "TargetVerdicts",
    "time_to_card",
    "versus_peer",
    "versus_summary",
    "VIRTUAL_EPOCH",
    "Word",
    "Workload",
    "WORKLOADS",
]
