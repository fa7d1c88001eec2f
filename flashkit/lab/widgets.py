"""ipywidgets front-ends for the lab experiments: sliders in, DataFrames and plots out.

The widgets are a thin layer: each control change rebuilds a config, calls the plain function in
:mod:`flashkit.lab.backoff`, :mod:`flashkit.lab.breaker` or :mod:`flashkit.lab.ratelimit`, keeps
the result on the object (``.data`` / ``.run``) and redraws. Bad combinations (a cap below the
initial delay, say) show the validation message instead of a plot and keep the last good result.

Responsiveness: sliders update on release (``continuous_update=False``); a change is
:class:`Debouncer`-ed (0.2 s), so a run of changes reruns the experiment once; in a kernel the
experiment then runs on the panel's worker thread and only the redraw comes back to the event
loop, so the kernel keeps answering (other widgets, the next change) however long a run takes,
and a run superseded by a newer change is dropped. A control set from code in a notebook cell
takes effect after the cell: ``.flush()``, ``.values()`` and ``.export()`` apply it at once.
Long sweeps in the notebooks report to a :class:`ProgressBar`.

In a notebook::

    from flashkit.lab.widgets import BackoffExplorer, BreakerSimulator, RateLimitExplorer
    BackoffExplorer()          # displays itself
    BreakerSimulator()
    RateLimitExplorer()
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import html
import math
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, ClassVar

import ipywidgets as w
import pandas as pd

from flashkit.config import build_limiters
from flashkit.errors import StructuredError, ValidationError
from flashkit.lab.backoff import delay_distribution, plot_delay_distribution
from flashkit.lab.breaker import (
    BreakerRun,
    BreakerSettings,
    Scenario,
    plot_breaker_timeline,
    simulate_breaker,
)
from flashkit.lab.ratelimit import ARRIVALS, LimiterRun, limiter_run, plot_limiter_run
from flashkit.lab.tuning import (
    breaker_values,
    limit_values,
    retry_values,
    tuned_settings,
    write_settings,
)
from flashkit.ratelimit import RateLimiter
from flashkit.retry import Jitter, RetryConfig

__all__ = ["BackoffExplorer", "BreakerSimulator", "Debouncer", "ProgressBar", "RateLimitExplorer"]

Schedule = Callable[[float, Callable[[], None]], Any]
"""``schedule(seconds, action)``: run ``action`` that much later; returns a handle with
``cancel()`` (None when it ran ``action`` at once)."""


def call_later(seconds: float, action: Callable[[], None]) -> asyncio.TimerHandle | None:
    """On the running event loop (a Jupyter kernel's, between messages), ``seconds`` later;
    with none running (a script, a test), at once."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        action()
        return None
    return loop.call_later(seconds, action)


class Debouncer:
    """Calls ``action`` once, ``wait`` seconds after the last of a run of calls: three slider
    moves in a row rerun an experiment once. ``schedule`` (default :func:`call_later`) is the
    timer, injectable for tests."""

    def __init__(
        self, action: Callable[[], None], wait: float = 0.2, *, schedule: Schedule = call_later
    ) -> None:
        self.action = action
        self.wait = wait
        self.schedule = schedule
        self._handle: Any = None

    @property
    def pending(self) -> bool:
        """Whether a call waits for its time."""
        return self._handle is not None

    def __call__(self) -> None:
        self.cancel()
        self._handle = _WAITING
        handle = self.schedule(self.wait, self._fire)
        if self._handle is _WAITING:  # not run at once by the timer
            self._handle = handle

    def _fire(self) -> None:
        self._handle = None
        self.action()

    def cancel(self) -> None:
        """Forget the waiting call, if any."""
        handle, self._handle = self._handle, None
        if handle is not None and handle is not _WAITING:
            handle.cancel()

    def flush(self) -> None:
        """Run the waiting call now, if any."""
        if self._handle is not None:
            self.cancel()
            self._fire()


_WAITING: Any = object()  # a Debouncer's handle while its timer is being set


class ProgressBar:
    """A progress bar for a long sweep, as the lab functions' ``progress(done, total)``
    callback: done / total, seconds elapsed and an estimate of those left. Displayed on its first
    call only when ``enabled`` (pass the notebook's ``show_widgets``: a papermill report gets no
    bar); redrawn at most every ``every`` seconds of ``clock`` (default ``time.perf_counter``)
    and at the end."""

    def __init__(
        self,
        description: str = "",
        *,
        enabled: bool = True,
        every: float = 0.1,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.enabled = enabled
        self.every = every
        self.clock = clock
        self.bar = w.IntProgress(value=0, min=0, max=1, description=description, style=_STYLE)
        self.label = w.Label("")
        self.widget = w.HBox([self.bar, self.label])
        self.started: float | None = None
        self._drawn = -math.inf

    def __call__(self, done: int, total: int) -> None:
        now = self.clock()
        if self.started is None:
            self.started = now
            if self.enabled:
                from IPython.display import display

                display(self.widget)  # type: ignore[no-untyped-call]
        if done < total and now - self._drawn < self.every:
            return
        self._drawn = now
        elapsed = now - self.started
        self.bar.max, self.bar.value = max(total, 1), done
        if done >= total:
            self.bar.bar_style = "success"
            self.label.value = f"{done}/{total} in {elapsed:.1f} s"
        else:
            left = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
            self.label.value = f"{done}/{total}, {elapsed:.1f} s{left}"


def _show(output: w.Output, *items: Any) -> None:
    """Replace the Output's content with ``items`` (figures are closed after display).

    In a kernel the content is set on the widget itself (its ``outputs``), not displayed inside
    ``with output:``: the front end captures displayed output only while the message that
    caused it is being handled, and a debounced redraw comes after that."""
    import matplotlib.pyplot as plt
    from IPython import get_ipython
    from IPython.display import clear_output, display
    from matplotlib.figure import Figure

    shell = get_ipython()
    if shell is not None:
        bundles = [shell.display_formatter.format(item) for item in items]
        output.outputs = tuple(
            {"output_type": "display_data", "data": data, "metadata": metadata}
            for data, metadata in bundles
        )
    else:  # no kernel (a script, a test): printed as display() prints
        with output:
            clear_output(wait=True)  # type: ignore[no-untyped-call]
            for item in items:
                display(item)  # type: ignore[no-untyped-call]
    for item in items:
        if isinstance(item, Figure):
            plt.close(item)


_STYLE = {"description_width": "130px"}


def _slider(cls: type[w.ValueWidget], description: str = "", **kwargs: Any) -> w.ValueWidget:
    """A slider that updates on release (each update reruns an experiment)."""
    return cls(description=description, style=_STYLE, continuous_update=False, **kwargs)


class _Panel:
    """A VBox of controls over an Output, with a row that writes what was tuned to a settings
    file; displays itself.

    A subclass reads its controls in :meth:`_job` (raising one of ``errors`` for a bad
    combination, shown as the message) and returns the computation, which :meth:`_draw` shows.
    A control change goes through ``.debouncer`` (``debounce`` seconds); then, in a kernel, the
    computation runs on the panel's own worker thread while the event loop stays free, and its
    result is drawn back on the loop unless a newer change superseded it. Without a running
    event loop (a script, a test) it all happens at once."""

    controls: dict[str, w.ValueWidget]
    output: w.Output
    message: w.HTML
    widget: w.VBox
    debounce: ClassVar[float] = 0.2
    errors: ClassVar[tuple[type[Exception], ...]] = (ValidationError,)

    def _layout(self, rows: list[list[str]]) -> None:
        self.output = w.Output()
        self.message = w.HTML("")
        self.status = w.HTML("")
        self.path = w.Text(value="flashkit.toml", description="settings file", style=_STYLE)
        self.save = w.Button(description="write flashkit.toml", icon="save")
        self.save.on_click(lambda _button: self._save())
        boxes = [w.HBox([self.controls[name] for name in row]) for row in rows]
        saving = w.HBox([self.path, self.save, self.status])
        self.widget = w.VBox([*boxes, saving, self.message, self.output])
        self.debouncer = Debouncer(self._refresh, self.debounce)
        self._generation = 0
        self._running: tuple[int, Future[Any]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        for control in self.controls.values():
            control.observe(self._on_change, names="value")

    def _job(self) -> Callable[[], Any]:  # pragma: no cover - overridden
        """Read the controls (raising one of ``errors``); the computation, for any thread."""
        raise NotImplementedError

    def _draw(self, result: Any) -> None:  # pragma: no cover - overridden
        """Keep ``result`` and show it (on the kernel's thread)."""
        raise NotImplementedError

    def _describe(self, error: Exception) -> str:
        if isinstance(error, StructuredError):
            return error.message
        return f"{type(error).__name__}: {error}"

    def _fail(self, error: Exception) -> None:
        self.message.value = f"<span style='color:#b00'>{html.escape(self._describe(error))}</span>"

    def update(self) -> None:
        """Rerun the experiment with the controls' values and redraw, now (blocking)."""
        try:
            result = self._job()()
        except self.errors as error:
            self._fail(error)
            return
        self.message.value = ""
        self._draw(result)

    def _on_change(self, change: dict[str, Any]) -> None:
        self.status.value = "<i>updating…</i>"
        self.debouncer()

    def _refresh(self) -> None:
        """The debounced rerun: off the event loop's thread when there is one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.update()
            self.status.value = ""
            return
        try:
            job = self._job()
        except self.errors as error:
            self._fail(error)
            self.status.value = ""
            return
        self._generation += 1
        generation = self._generation

        def run() -> Any:
            return None if generation != self._generation else job()  # superseded: skip

        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=type(self).__name__)
        future = self._executor.submit(run)
        self._running = (generation, future)
        context = contextvars.copy_context()  # the kernel's parent message: where output goes
        future.add_done_callback(
            lambda _: loop.call_soon_threadsafe(self._land, generation, context=context)
        )

    def _land(self, generation: int) -> None:
        """Show the computation of ``generation`` unless a newer one, or :meth:`flush`, did."""
        running, self._running = self._running, None
        if running is None or running[0] != generation:
            self._running = running
            return
        self.status.value = ""
        try:
            result = running[1].result()
        except Exception as error:  # no caller to raise to: say it where the plot would be
            self._fail(error)
            return
        self.message.value = ""
        self._draw(result)

    def flush(self) -> None:
        """Apply a control change still waiting for its debounce or its computation, now."""
        self.debouncer.flush()
        if self._running is not None:
            generation, future = self._running
            wait([future])
            self._land(generation)

    def values(self) -> dict[str, Any]:
        """The tuned values as ``{"section.field": value}`` of :class:`flashkit.config.Settings`
        (a change still waiting for its debounce applied first)."""
        self.flush()
        return self._values()

    def _values(self) -> dict[str, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def export(self, path: str | Path = "flashkit.toml") -> Path:
        """Write the tuned values into the settings file at ``path`` (see
        :func:`flashkit.lab.tuning.write_settings`); ``flashkit process --config`` uses them."""
        return write_settings(path, self.values())

    def _save(self) -> None:
        try:
            target = self.export(self.path.value)
        except (StructuredError, OSError, ValueError) as error:
            text = error.message if isinstance(error, StructuredError) else str(error)
            self.message.value = f"<span style='color:#b00'>{html.escape(text)}</span>"
            return
        self.message.value = (
            f"wrote {html.escape(str(target))}: <code>flashkit process WORDS.csv --config "
            f"{html.escape(str(target))}</code> runs with it"
        )

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)  # type: ignore[no-untyped-call]


class BackoffExplorer(_Panel):
    """Sliders over :class:`RetryConfig` (initial delay, cap, base, attempts, jitter) showing the
    distribution of each retry's delay. ``.config`` and ``.data`` hold the latest result."""

    def __init__(self, config: RetryConfig | None = None, *, samples: int = 2000, seed: int = 0):
        config = config if config is not None else RetryConfig()
        self.samples = samples
        self.seed = seed
        self.controls = {
            "initial_delay": _slider(
                w.FloatLogSlider,
                "initial (s)",
                value=config.initial_delay or 0.001,
                base=10,
                min=-3,
                max=2,
            ),
            "max_delay": _slider(
                w.FloatLogSlider, "cap (s)", value=config.max_delay or 0.001, base=10, min=-3, max=3
            ),
            "exponential_base": _slider(
                w.FloatSlider, "base", value=config.exponential_base, min=1.0, max=4.0, step=0.1
            ),
            "max_attempts": _slider(
                w.IntSlider, "attempts", value=config.max_attempts, min=2, max=12
            ),
            "jitter": w.Dropdown(
                options=[(j.name.lower(), j) for j in Jitter],
                value=config.jitter if isinstance(config.jitter, Jitter) else Jitter.EQUAL,
                description="jitter",
                style=_STYLE,
            ),
        }
        self.config = config
        self.data = pd.DataFrame(columns=["sample", "retry", "delay", "cumulative"])
        self._layout(
            [["initial_delay", "max_delay"], ["exponential_base", "max_attempts"], ["jitter"]]
        )
        self.update()

    def _job(self) -> Callable[[], Any]:
        config = RetryConfig(**{name: control.value for name, control in self.controls.items()})
        samples, seed = self.samples, self.seed
        return lambda: (config, delay_distribution(config, samples=samples, seed=seed))

    def _draw(self, result: tuple[RetryConfig, pd.DataFrame]) -> None:
        self.config, self.data = result
        config = self.config
        table = (
            self.data.groupby("retry")["delay"]
            .describe(percentiles=[0.5, 0.95])[["mean", "50%", "95%", "max"]]
            .round(3)
        )
        figure = plot_delay_distribution(
            self.data, title=f"{Jitter(config.jitter).name.lower()} jitter, {self.samples} samples"
        )
        _show(self.output, figure, table)

    def _values(self) -> dict[str, Any]:
        """The ``[retry]`` settings of the current :class:`RetryConfig`."""
        return retry_values(self.config)


class BreakerSimulator(_Panel):
    """Sliders over a :class:`CircuitBreaker` (threshold, min throughput, window, break duration
    and its growth, half-open probes) driving :func:`simulate_breaker` through ``scenario``;
    shows the timeline against the same run without a breaker. ``.run`` and ``.baseline`` hold
    the latest :class:`BreakerRun`\\ s."""

    def __init__(
        self,
        scenario: Scenario | None = None,
        settings: BreakerSettings | None = None,
        *,
        seed: int = 0,
    ) -> None:
        self.scenario = scenario if scenario is not None else Scenario()
        settings = settings if settings is not None else BreakerSettings()
        self.seed = seed
        self.controls = {
            name: _slider(
                kind,
                value=getattr(settings, name),
                min=low,
                max=high,
                step=step,
                description=description,
            )
            for name, kind, low, high, step, description in (
                ("failure_threshold", w.FloatSlider, 0.05, 1.0, 0.05, "failure threshold"),
                ("min_throughput", w.IntSlider, 2, 200, 1, "min throughput"),
                ("sampling_duration", w.FloatSlider, 1.0, 60.0, 1.0, "window (s)"),
                ("break_duration", w.FloatSlider, 0.5, 60.0, 0.5, "break (s)"),
                ("growth", w.FloatSlider, 1.0, 4.0, 0.5, "break growth ×"),
                ("half_open_max_calls", w.IntSlider, 1, 10, 1, "half-open probes"),
            )
        }
        self.baseline = simulate_breaker(self.scenario, use_breaker=False, seed=seed)
        self.settings = settings
        self.run: BreakerRun | None = None
        self._layout(
            [
                ["failure_threshold", "min_throughput"],
                ["sampling_duration", "break_duration"],
                ["growth", "half_open_max_calls"],
            ]
        )
        self.update()

    def _job(self) -> Callable[[], Any]:
        values = {name: control.value for name, control in self.controls.items()}
        settings = dataclasses.replace(self.settings, **values)
        scenario, seed = self.scenario, self.seed
        return lambda: (settings, simulate_breaker(scenario, settings, seed=seed))

    def _draw(self, result: tuple[BreakerSettings, BreakerRun]) -> None:
        self.settings, run = result
        self.run = run
        summary = pd.DataFrame(
            {
                "with breaker": {k: v for k, v in run.summary.items() if k != "settings"},
                "no breaker": {k: v for k, v in self.baseline.summary.items() if k != "settings"},
            }
        )
        figure = plot_breaker_timeline(run, self.scenario, baseline=self.baseline)
        _show(self.output, figure, summary)

    def _values(self) -> dict[str, Any]:
        """The ``[breaker]`` settings of the current knobs."""
        return breaker_values(self.settings)


class RateLimitExplorer(_Panel):
    """Rate (units per period), period, algorithm and burst of a :class:`RateLimiter`, and the
    arrivals (pattern, arrivals per second, requests, concurrent tasks): what the limiter admits
    over time, in virtual time (:func:`~flashkit.lab.ratelimit.limiter_run`), next to what
    ``flashkit process`` builds from the exported ``[limits]`` (dashed). ``.limiter``, ``.run``
    and ``.built`` hold the latest."""

    def __init__(
        self,
        limiter: RateLimiter | None = None,
        *,
        arrivals: str = "burst",
        per_second: int = 100,
        total: int = 600,
        tasks: int = 50,
        seed: int = 0,
    ) -> None:
        limiter = limiter if limiter is not None else RateLimiter(200, 1.0)
        self.seed = seed
        periods = dict.fromkeys([1.0, 10.0, 60.0, float(limiter.period)])
        algorithms = [("sliding window", "sliding_window"), ("token bucket", "token_bucket")]
        self.controls = {
            "rate": _slider(
                w.IntSlider, "rate (per period)", value=int(limiter.rate), min=1, max=1000
            ),
            "period": w.Dropdown(
                options=[(f"{p:g} s", p) for p in sorted(periods)],
                value=float(limiter.period),
                description="period",
                style=_STYLE,
            ),
            "algorithm": w.Dropdown(
                options=[*algorithms, ("GCRA", "gcra")],
                value=limiter.algorithm,
                description="algorithm",
                style=_STYLE,
            ),
            "burst": _slider(
                w.IntSlider, "burst (0: none)", value=int(limiter.burst or 0), min=0, max=1000
            ),
            "arrivals": w.Dropdown(
                options=list(ARRIVALS), value=arrivals, description="arrivals", style=_STYLE
            ),
            "per_second": _slider(w.IntSlider, "arrivals / s", value=per_second, min=1, max=2000),
            "total": _slider(w.IntSlider, "requests", value=total, min=10, max=3000, step=10),
            "tasks": _slider(w.IntSlider, "tasks", value=tasks, min=1, max=200),
        }
        self.limiter = limiter
        self.run: LimiterRun | None = None
        self.built: LimiterRun | None = None
        self._layout(
            [["rate", "period"], ["algorithm", "burst"], ["arrivals", "per_second"],
             ["total", "tasks"]]
        )  # fmt: skip
        self.update()

    def _job(self) -> Callable[[], Any]:
        values = {name: control.value for name, control in self.controls.items()}
        shape = {"rate": values["rate"], "period": values["period"]}
        shape |= {"algorithm": values["algorithm"], "burst": values["burst"] or None}
        limiter = RateLimiter(**shape, name="requests")
        settings = tuned_settings(limit_values(limiter))
        arrivals = {name: values[name] for name in ("total", "per_second", "tasks")}
        arrivals |= {"arrivals": values["arrivals"], "seed": self.seed}

        def job() -> tuple[RateLimiter, LimiterRun, LimiterRun]:
            run = limiter_run(lambda clock: RateLimiter(**shape, clock=clock), **arrivals)
            built = limiter_run(lambda clock: _requests(settings, clock), **arrivals)
            return limiter, run, built

        return job

    def _draw(self, result: tuple[RateLimiter, LimiterRun, LimiterRun]) -> None:
        limiter, run, built = result
        self.limiter, self.run, self.built = limiter, run, built
        table = pd.DataFrame({"this limiter": run.summary, "flashkit process": built.summary})
        figure = plot_limiter_run(run, built=built, title=f"{limiter!r}")
        _show(self.output, figure, table)

    def _values(self) -> dict[str, Any]:
        """The ``[limits]`` settings of the current limiter (requests per minute)."""
        return limit_values(self.limiter)


def _requests(settings: Any, clock: Any) -> Any:
    """The requests limiter ``flashkit process`` builds from ``settings``, on ``clock``."""
    requests, _tokens = build_limiters(settings, clock=clock)
    return requests
