"""The logic behind flashkit's notebooks: experiments as plain functions returning DataFrames.

- :mod:`flashkit.lab.backoff`: delay distributions of a :class:`~flashkit.retry.RetryConfig`, and
  Brooker's 2015 contention experiment run with flashkit's own ``calculate_delay`` in virtual time.
- :mod:`flashkit.lab.breaker`: a :class:`~flashkit.breaker.CircuitBreaker` driven through a
  scripted outage and brownout in virtual time, as a per-second timeline.
- :mod:`flashkit.lab.ratelimit`: what each limiter admits on the same burst.
- :mod:`flashkit.lab.cache`: codecs on cached flashcard answers, and one hot key's stampede
  (no protection, TTL jitter, single flight, XFetch) in virtual time.
- :mod:`flashkit.lab.success`: the success metrics (``docs/origins.md``), before / after / peer.
- :mod:`flashkit.lab.datalayer`: cache hit rate and pool efficiency on ``flashkit process``'s path.
- :mod:`flashkit.lab.widgets`: thin ipywidgets layers (tested by setting ``.value``).

Needs the ``lab`` extra (pandas, matplotlib, ipywidgets): ``pip install 'flashkit[lab]'``.
"""
