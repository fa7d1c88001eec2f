"""Outages of a Redis limiter's server: fail closed, or (``on_unavailable="local_fallback"``) hold,
then admit a local share of the limit, probing the server; when it answers again, replay the
local admissions and mark the other processes' shares. Times are seconds on this process's
clock, shares are units per period.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Final

from flashkit.errors import RateLimitError
from flashkit.ratelimit._base import EPS
from flashkit.ratelimit._local import RateLimiter
from flashkit.ratelimit._redis_errors import (
    redis_errors,
    script_error,
    scrub,
    timeout_error,
    unavailable_error,
)
from flashkit.ratelimit._redis_protocol import (
    RESUME,
    Decision,
    Eval,
    Flow,
    Shared,
    Sleep,
)

__all__ = ["GO", "LOCAL", "PROBE", "Outage"]

logger = logging.getLogger("flashkit.ratelimit")

GO, PROBE, LOCAL = range(3)  # see Outage.route
_NAP: Final = 1e-3  # the shortest sleep before trying again (s)


class Outage:
    """This process's view of the server being down, and the local fallback while it is.

    ``down`` from the first call that could not reach the server until one that did;
    ``hold_until``: no local admission before then (``fallback_hold`` after the outage began:
    this process cannot know what the others were admitted just before); ``next_probe``: the
    next call to try the server then. ``replays``: the local admissions of the last period
    (local time, key, units), written into the log when the server answers again.
    """

    def __init__(self, shared: Shared) -> None:
        self.shared = shared
        self.settings = settings = shared.settings
        self._now = shared.clock.now
        self.counters = shared.counters
        self.lock = shared.lock
        clock = shared.clock
        self.down = False
        self.hold_until = -math.inf
        self.next_probe = -math.inf
        self.replays: deque[tuple[float, str, float]] = deque()
        self.local = RateLimiter(
            settings.fallback_rate,
            settings.period,
            algorithm=settings.algorithm,
            burst=settings.fallback_burst,
            clock=clock,
            name=f"{settings.name}.fallback",
        )

    # --- the state of the outage --------------------------------------------------------------
    def handle(self, error: BaseException) -> None:
        """A script call failed: raise what the caller should see, or (the server unreachable)
        start or continue the outage and return (raises too when failing closed)."""
        errors = redis_errors()
        s = self.settings
        if isinstance(error, errors.config):
            hint = "check the credentials and ACL permissions"
            raise script_error(s.name, s.url, error, hint) from None
        if isinstance(error, errors.unavailable):
            self.failed(error)
            return
        hint = f"check that nothing else writes keys under {self.shared.keys.tag!r}"
        raise script_error(s.name, s.url, error, hint) from None

    def failed(self, error: BaseException) -> None:
        """A call could not reach the server: start (or continue) the outage; raise if failing
        closed."""
        s = self.settings
        now = self._now()
        with self.lock:
            first = not self.down
            if first:
                self.down = True
                self.hold_until = now + s.fallback_hold
            self.next_probe = now + s.probe_interval
        if first:
            detail = scrub(f"{type(error).__name__}: {error}")
            if s.on_unavailable == "fail_closed":
                then = "failing closed (nothing is admitted) until it answers"
            else:
                then = (
                    f"refusing for {s.fallback_hold:g} s, then admitting up to "
                    f"{s.fallback_rate:g} units per {s.period:g} s in this process until it "
                    "answers"
                )
            logger.warning("%s: Redis at %s is unavailable (%s); %s", s.name, s.url, detail, then)
        if s.on_unavailable == "fail_closed":
            raise unavailable_error(s.name, s.url, error, s.probe_interval) from None

    def route(self) -> int:
        """While the server is down: PROBE when this call should try it (claiming the probe),
        LOCAL to decide locally (raises instead when failing closed); GO once it is back."""
        now = self._now()
        with self.lock:
            if not self.down:
                return GO
            if now >= self.next_probe:
                self.next_probe = now + self.settings.probe_interval
                return PROBE
            wait = self.next_probe - now
        if self.settings.on_unavailable == "fail_closed":
            s = self.settings
            silence = ConnectionError("no answer since the last probe")
            raise unavailable_error(s.name, s.url, silence, wait)
        return LOCAL

    def recovered(self) -> None:
        """A decision reached the server again."""
        with self.lock:
            was_down, self.down = self.down, False
        if was_down:
            s = self.settings
            logger.info("%s: Redis at %s answers again; deciding there", s.name, s.url)

    # --- resuming -----------------------------------------------------------------------------
    def resume(self, key: str) -> Flow[None]:
        """Probe and resume: replay this process's local admissions, mark the others' shares."""
        s = self.settings
        # The others' holds started no earlier than our last successful call: if they have not
        # ended by the time their probes reach the server, nobody admitted locally.
        marked = self._now() + s.probe_interval > self.shared.session.last_ok_sent + s.fallback_hold
        mark = repr(s.probe_interval) if marked else ""
        first = True
        replayed = 0
        while True:
            with self.lock:
                batch = list(self.replays)
                self.replays.clear()
                if not batch and not first:
                    was_down, self.down = self.down, False
                    break
            by_key = self._by_key(batch)
            if first and not by_key:
                by_key[key] = []
            try:
                yield from self._replay(by_key, mark if first else "")
            except BaseException:
                with self.lock:
                    self.replays.extendleft(reversed(batch))
                raise
            first = False
            replayed += len(batch)
        if was_down:
            logger.info(
                "%s: Redis at %s answers again; replayed %d local admission(s), deciding there",
                s.name,
                s.url,
                replayed,
            )

    def _by_key(self, batch: list[tuple[float, str, float]]) -> dict[str, list[str]]:
        """The admissions that still matter, per key: (seconds ago, units) pairs."""
        now = self._now()
        horizon = self.settings.period + self.settings.grace
        by_key: dict[str, list[str]] = {}
        for when, key, units in batch:
            if now - when < horizon:
                by_key.setdefault(key, []).extend((repr(now - when), repr(units)))
        return by_key

    def _replay(self, by_key: dict[str, list[str]], mark: str) -> Flow[None]:
        """One resume script call per key; the first one sets the mark ("" = none)."""
        session = self.shared.session
        for key, pairs in by_key.items():
            args = [*session.prelude(), mark, f"~rp{session.entry_id()}", *pairs]
            sent = self._now()
            reply = yield Eval(RESUME, self.shared.keys(key), args)
            session.saw(reply[1], sent, float(reply[0]), self._now())
            mark = ""

    # --- deciding locally ---------------------------------------------------------------------
    def decide(
        self, key: str, n: float, deadline: float, wait_ok: bool
    ) -> Flow[tuple[Decision | None, float]]:
        """Decide on the local limiter, or wait for the hold / the next probe.

        Returns (decision, seconds slept); decision None: go round again (probe or retry).
        """
        now = self._now()
        hold = self.hold_until - now
        to_probe = max(0.0, self.next_probe - now)
        if n > self.local.max_count + EPS:  # more than the local share: only Redis can admit it
            hold = max(hold, to_probe, _NAP)
        if hold > 0.0:
            return (yield from self._hold(key, n, deadline, wait_ok, hold, to_probe))
        if not wait_ok:
            return self._try(key, n, now), 0.0
        return (yield from self._reserve(key, n, deadline, to_probe))

    def _hold(
        self, key: str, n: float, deadline: float, wait_ok: bool, hold: float, to_probe: float
    ) -> Flow[tuple[Decision | None, float]]:
        """Refuse (the hold is longer than the caller waits), or sleep towards its end."""
        now = self._now()
        if not wait_ok or now + hold > deadline + EPS:
            with self.lock:
                self.counters.rejected += 1
            if wait_ok:
                raise timeout_error(self.settings.name, key, n, hold, deadline - now)
            return Decision(False, 0.0, hold, now + hold, math.nan, 0.0, "fallback"), 0.0
        nap = max(min(hold, to_probe), _NAP)
        yield Sleep(nap)
        return None, nap

    def _try(self, key: str, n: float, now: float) -> Decision:
        result = self.local.try_acquire(key, n)
        counters = self.counters
        with self.lock:
            if result.allowed:
                self.remember(now, key, n)
                counters.admitted += 1
                counters.admitted_units += n
            else:
                counters.rejected += 1
        server_time = now + self.shared.session.offset if result.allowed else math.nan
        return Decision(
            result.allowed,
            result.remaining,
            result.retry_after,
            result.reset_at,
            server_time,
            0.0,
            "fallback",
        )

    def _reserve(
        self, key: str, n: float, deadline: float, to_probe: float
    ) -> Flow[tuple[Decision | None, float]]:
        """Wait for a local admission; none past the next probe (the server may be back)."""
        now = self._now()
        try:
            reservation = self.local.reserve(
                key, n, max_wait=max(0.0, min(deadline, self.next_probe) - now)
            )
        except RateLimitError as error:
            wait = error.retry_after or 0.0
            if now + wait <= deadline + EPS:  # it would fit the timeout: probe first
                nap = max(to_probe, _NAP)
                yield Sleep(nap)
                return None, nap
            with self.lock:
                self.counters.rejected += 1
            raise timeout_error(self.settings.name, key, n, wait, deadline - now) from None
        entry = (reservation.execute_at, key, n)
        with self.lock:
            self.remember(*entry)
        wait = max(0.0, reservation.execute_at - now)
        if wait > 0.0:
            try:
                yield Sleep(wait)
            except GeneratorExit:
                raise
            except BaseException:
                reservation.cancel()
                with self.lock:
                    if entry in self.replays:
                        self.replays.remove(entry)
                raise
        reservation.use()
        with self.lock:
            self.counters.admitted += 1
            self.counters.admitted_units += n
        at = reservation.execute_at
        remaining = self.local.remaining(key)
        decision = Decision(
            True,
            remaining,
            0.0,
            at + self.settings.period,
            at + self.shared.session.offset,
            wait,
            "fallback",
        )
        return decision, wait

    def remember(self, when: float, key: str, n: float) -> None:
        """Keep a local admission for the replay (lock held); forget those too old to matter."""
        replays = self.replays
        replays.append((when, key, n))
        horizon = when - self.settings.period - self.settings.grace
        while replays and replays[0][0] < horizon:
            replays.popleft()
