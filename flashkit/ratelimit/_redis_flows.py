"""The decisions of a Redis limiter, written once as sans-I/O flows (generators yielding a script
call or a sleep; :mod:`flashkit._flow` drives them, blocking or on asyncio): decide (a lease, the
local fallback or a script), wait for a reservation and confirm it on waking, settle an
estimate, give units back. Counts are units; times are seconds (server times: the server's
clock; deadlines and leases: this process's).
"""

from __future__ import annotations

import math
from typing import Any

from flashkit.ratelimit._base import EPS, check_actual, check_number
from flashkit.ratelimit._redis_errors import redis_errors, timeout_error
from flashkit.ratelimit._redis_fallback import LOCAL, PROBE, Outage
from flashkit.ratelimit._redis_leases import Lease, Leases
from flashkit.ratelimit._redis_protocol import (
    ADJUST,
    CONFIRM,
    DECIDE,
    NO_LIMIT,
    REFUND,
    WAKE,
    Decision,
    Eval,
    Flow,
    Reply,
    Shared,
    Sleep,
)

__all__ = ["Flows"]

Due = tuple[float, float, float]  # (server time the units count at, remaining, reset_at)
# Wakes of sliding-window waiters, counted by kind (Flows.wakes):
ON_TIME, STOOD, MOVED, QUEUED, REFUSED = range(5)


def _limit(max_wait: float) -> str:
    """A max_wait script argument (seconds)."""
    return NO_LIMIT if max_wait == math.inf else repr(max(0.0, max_wait))


class Flows:
    """One limiter's flows, over the state its parts keep (see RedisRateLimiter.__init__).

    ``wakes``: sliding-window waiters that woke on time (no round trip), stood after a round
    trip, moved to the server's now, queued again, or were refused (timeout); about, under
    threads.
    """

    def __init__(self, shared: Shared, outage: Outage, leases: Leases) -> None:
        self.shared = shared
        self.settings = shared.settings
        self._now = shared.clock.now
        self.counters = shared.counters
        self.lock = shared.lock
        self.outage = outage
        self.leases = leases
        self.errors = redis_errors()
        self.wakes = [0, 0, 0, 0, 0]

    # --- deciding -----------------------------------------------------------------------------
    def decide(self, key: str, n: float, timeout: float | None, wait_ok: bool) -> Flow[Decision]:
        """One decision for ``n`` units of ``key``: a lease, the fallback or a script; with
        ``wait_ok`` (acquire) also the wait, refusing only past ``timeout`` (then it raises)."""
        deadline = math.inf if timeout is None else self._now() + max(0.0, float(timeout))
        slept = 0.0
        while True:
            if self.settings.lease is not None:
                taken = self._take_lease(key, n, wait_ok)
                if taken is not None:
                    return taken
            if self.outage.down:
                local = yield from self._while_down(key, n, deadline, wait_ok)
                if local is not None:
                    decision, naps = local
                    slept += naps
                    if decision is None:
                        continue
                    return self._decided_locally(decision, slept, wait_ok)
            asked = yield from self._ask(key, n, deadline, wait_ok)
            if asked is None:
                continue  # the server failed: decide again (fallback or raise)
            reply, reset_at = asked
            if not reply.allowed:
                return self._refused(key, n, reply, reset_at, slept, timeout, wait_ok)
            naps, due = yield from self._wait(key, n, timeout, deadline, reply, reset_at)
            slept += naps
            if due is None:
                continue  # the server failed when it woke, or lost the reservation: again
            return self._admitted(n, due, slept, wait_ok)

    def _take_lease(self, key: str, n: float, wait_ok: bool) -> Decision | None:
        if not self.leases.held.get(key):
            return None
        now = self._now()
        with self.lock:
            hit = self.leases.take(key, n, now)
            if hit is None:
                return None
            counters = self.counters
            counters.admitted += 1
            counters.admitted_units += n
            if wait_ok:
                counters.waits[0] += 1
        return Decision(True, max(0.0, hit.left), 0.0, hit.reset_at, now + hit.offset, 0.0, "lease")

    def _while_down(
        self, key: str, n: float, deadline: float, wait_ok: bool
    ) -> Flow[tuple[Decision | None, float] | None]:
        """While the server is down: (a local decision, or None to go round again; seconds
        slept), or None to ask the server (a probe, after resuming)."""
        route = self.outage.route()  # raises when failing closed
        if route == LOCAL:
            return (yield from self.outage.decide(key, n, deadline, wait_ok))
        if route == PROBE and self.settings.on_unavailable == "local_fallback":
            try:
                yield from self.outage.resume(key)
            except self.errors.any as error:
                self.outage.handle(error)
                return None, 0.0
        return None

    def _decided_locally(self, decision: Decision, slept: float, wait_ok: bool) -> Decision:
        if decision.allowed and wait_ok:
            with self.lock:
                self.counters.waited(slept)
        return decision._replace(waited=slept)

    def _ask(
        self, key: str, n: float, deadline: float, wait_ok: bool
    ) -> Flow[tuple[Reply, float] | None]:
        """The decision script (asking for a lease, giving back the key's expired ones):
        (its reply, reset_at on the local clock), or None when the server failed."""
        leases = self.leases
        lease = self.settings.lease
        lease = lease if lease is not None and leases.claim(key) else 0.0
        returns = leases.pop_returns(key)
        max_wait = deadline - self._now() if wait_ok else 0.0
        session = self.shared.session
        args = [
            *session.prelude(),
            repr(n),
            _limit(max_wait),
            session.entry_id(),
            repr(lease),
            len(returns) if returns else 0,
        ]
        for member, kept in returns or ():
            args += [member, repr(kept)]
        sent = self._now()
        try:
            reply = Reply.decode((yield Eval(DECIDE, self.shared.keys(key), args)))
        except self.errors.any as error:
            self.outage.handle(error)
            return None
        finally:
            if lease:
                leases.release(key)
        received = self._now()
        session.saw(reply.epoch, sent, reply.server_now, received)
        if self.outage.down:
            self.outage.recovered()
        reset_at = received + reply.reset_in
        granted = reply.granted
        if reply.allowed and granted > 0.0 and granted - n > EPS:
            until = sent + self.settings.lease_duration
            offset = reply.server_now - received
            leases.keep(key, Lease(reply.member, granted, granted - n, until, offset, reset_at))
        return reply, reset_at

    def _refused(
        self,
        key: str,
        n: float,
        reply: Reply,
        reset_at: float,
        slept: float,
        timeout: float | None,
        wait_ok: bool,
    ) -> Decision:
        with self.lock:
            self.counters.rejected += 1
        if wait_ok:
            raise timeout_error(self.settings.name, key, n, reply.retry_after, timeout)
        return Decision(
            False, reply.remaining, reply.retry_after, reset_at, math.nan, slept, "redis"
        )

    def _admitted(self, n: float, due: Due, slept: float, wait_ok: bool) -> Decision:
        at, remaining, reset_at = due
        with self.lock:
            counters = self.counters
            counters.admitted += 1
            counters.admitted_units += n
            if wait_ok:
                counters.waited(slept)
        return Decision(True, remaining, 0.0, reset_at, at, slept, "redis")

    # --- waiting ------------------------------------------------------------------------------
    def _wait(
        self, key: str, n: float, timeout: float | None, deadline: float, reply: Reply, reset: float
    ) -> Flow[tuple[float, Due | None]]:
        """Until an admission is due: (seconds slept, what it is due with, or None to decide
        again). Sliding window: confirmed on waking; buckets keep their schedule."""
        wait = reply.at - reply.server_now
        if wait <= 0.0:
            return 0.0, (reply.at, reply.remaining, reset)
        if self.settings.algorithm == "sliding_window":
            return (yield from self._wait_turn(key, n, timeout, deadline, reply, reset))
        yield from self._nap(key, reply.member, n, wait)
        valid = yield from self._still_valid(reply.epoch)
        if not valid:  # the reservation was lost with the server's state: queue again
            return wait, None
        return wait, (reply.at, reply.remaining, reset)

    def _nap(self, key: str, member: bytes, n: float, seconds: float) -> Flow[None]:
        """Sleep towards a reservation; cancelled meanwhile, give it back."""
        try:
            yield Sleep(seconds)
        except GeneratorExit:
            raise
        except BaseException:
            yield from self._refund(key, member, n)
            raise

    def _wait_turn(
        self, key: str, n: float, timeout: float | None, deadline: float, reply: Reply, reset: float
    ) -> Flow[tuple[float, Due | None]]:
        """Sleep until a sliding-window reservation is due, and make its units count from when
        they are really used (confirm on wake, see docs/design/redis-ratelimit.md).

        A firm reservation woken within the tolerance of its due time, whose epoch this process
        saw within the grace, goes at its due time with no round trip. Otherwise one round trip
        (the wake script, which also checks the epoch) lets it stand (on time after all), moves
        it to the server's now if every window holding now has room, or else to the earliest
        time that has (then it sleeps again). Returns (seconds slept, what it is due with, or
        None when the server failed: the caller decides again). Raises a timeout error when
        queuing again would pass ``timeout``.
        """
        member, epoch, due = reply.member, reply.epoch, reply.at
        wait, remaining = due - reply.server_now, reply.remaining
        slept = 0.0
        while True:
            if wait > 0.0:
                yield from self._nap(key, member, n, wait)
                slept += wait
            woke = self._now()
            if self._on_time(member, epoch, due, woke):
                self.wakes[ON_TIME] += 1
                return slept, (due, remaining, reset)
            session = self.shared.session
            args = [*session.prelude(), repr(n), _limit(deadline - woke), member, repr(due), epoch]
            sent = self._now()
            try:
                reply = Reply.decode((yield Eval(WAKE, self.shared.keys(key), args)))
            except self.errors.any as error:
                self.outage.handle(error)
                return slept, None
            except GeneratorExit:
                raise
            except BaseException:  # cancelled in flight: give back whichever slot it now holds
                yield from self._refund(key, member, n)
                raise
            received = self._now()
            now, epoch, remaining = reply.server_now, reply.epoch, reply.remaining
            session.saw(epoch, sent, now, received)
            reset = received + reply.reset_in
            if not reply.allowed:
                with self.lock:
                    self.counters.rejected += 1
                self.wakes[REFUSED] += 1
                raise timeout_error(self.settings.name, key, n, reply.retry_after, timeout)
            at, member = reply.at, reply.member
            self.wakes[STOOD if at == due else MOVED if at == now else QUEUED] += 1
            if at <= now:
                return slept, (at, remaining, reset)
            due, wait = at, at - now

    def _on_time(self, member: bytes, epoch: bytes, due: float, woke: float) -> bool:
        """A firm reservation, of the epoch this process saw within the grace, woken (by its
        best estimate of server time) within the tolerance of its due time."""
        session, settings = self.shared.session, self.settings
        return (
            member[:1] != b"&"
            and epoch == session.epoch
            and session.epoch_seen_at >= woke - settings.grace
            and woke + session.server_offset() - due <= settings.tolerance
        )

    def _still_valid(self, epoch: bytes) -> Flow[bool]:
        """After waiting for a bucket reservation: is it still in the server's state?"""
        session = self.shared.session
        if session.epoch != epoch:
            return False
        sent = self._now()
        if session.epoch_seen_at >= sent - self.settings.grace:
            return True
        try:
            reply = yield Eval(CONFIRM, [self.shared.keys.meta], session.prelude())
        except self.errors.any as error:
            self.outage.handle(error)
            return False
        session.saw(reply[1], sent, float(reply[0]), self._now())
        return bool(reply[1] == epoch)

    # --- settling -----------------------------------------------------------------------------
    def adjust(
        self, key: str, actual_count: float, estimated_count: float, admitted_at: float | None
    ) -> Flow[float]:
        """Charge usage above the estimate, or refund the rest (sliding window; a bucket's
        refund is forfeited): returns ``actual_count - estimated_count``."""
        where = f"{self.settings.name}.adjust"
        delta = check_actual(actual_count, where) - estimated_count
        if admitted_at is not None:
            hint = "server seconds (Grant.admitted_at)"
            admitted_at = check_number(admitted_at, f"{where} admitted_at", hint, allow_zero=True)
        if delta == 0.0:
            return delta
        if delta < 0.0 and self.settings.algorithm != "sliding_window":
            with self.lock:
                self.counters.forfeited += -delta
            return delta
        upto = repr(admitted_at) if delta < 0.0 and admitted_at is not None else ""
        args = [*self.shared.session.prelude(), repr(delta), upto, self.shared.session.entry_id()]
        try:
            reply = yield Eval(ADJUST, self.shared.keys(key), args)
        except self.errors.any:  # unreachable: a refund is forfeited, a charge lost
            done = 0.0
        else:
            done = float(reply)
        with self.lock:
            if delta < 0.0:
                self.counters.refunded += done
                self.counters.forfeited += -delta - done
            else:
                self.counters.admitted_units += done
        return delta

    def _refund(self, key: str, member: bytes, n: float) -> Flow[None]:
        """Give a cancelled reservation back (best effort: the server may be gone)."""
        keys = self.shared.keys(key)[1:]
        sliding = self.settings.algorithm == "sliding_window"
        args: list[Any] = [member]
        if sliding:  # under any of its names: a wake renames it
            base = member.lstrip(b"+&")
            args = [base, "0", b"+" + base, "0", b"&" + base, "0"]
        try:
            reply = yield Eval(REFUND, keys, args)
        except Exception:  # unreachable: the entry ages out on its own
            return
        with self.lock:
            if sliding:
                self.counters.refunded += float(reply)
            elif reply == b"1":
                self.counters.refunded += n
            else:  # later grants were computed with these units gone
                self.counters.forfeited += n

    def give_back_leases(self) -> Flow[None]:
        """Return every lease's unused units now (at close)."""
        if self.settings.lease is None:
            return
        for key, pairs in self.leases.drain().items():
            args: list[Any] = []
            for member, kept in pairs:
                args += [member, repr(kept)]
            try:
                yield Eval(REFUND, self.shared.keys(key)[1:], args)
            except Exception:  # best effort: the entries age out on their own
                return
