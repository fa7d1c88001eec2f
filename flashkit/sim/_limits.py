"""The upstream's own rate-limit accounting: per key, requests and tokens, changeable mid-run.

Not :class:`flashkit.ratelimit.RateLimiter`: the provider's books need what a client-side limiter
must not do (count rejected requests, settle reserved tokens after the fact, change the limit
under live state) and report the numbers that go into the headers.
"""

from __future__ import annotations

import math
from typing import Final, NamedTuple

__all__ = ["Decision", "LimitBook", "LimitView"]

_WINDOW: Final = 60.0  # seconds per fixed window; limits are per minute
_EPS: Final = 1e-9


class LimitView(NamedTuple):
    """One limit as a client sees it: limit per minute, remaining now, seconds until reset."""

    limit: float
    remaining: float
    reset: float


class Decision(NamedTuple):
    """The answer for one request. ``kind``: ``None`` (admitted), ``"requests"``, ``"tokens"``
    or ``"too_large"`` (more tokens than the limit can ever hold). ``retry_after``: seconds
    until the same request would pass (0.0 when admitted, inf when too large)."""

    kind: str | None
    retry_after: float
    requests: LimitView | None
    tokens: LimitView | None


class _KeyState:
    __slots__ = ("req", "stamp", "tok", "window")

    def __init__(self, req: float, tok: float, stamp: float) -> None:
        # Bucket mode: levels (units available) at ``stamp``. Window mode: units used in
        # ``window`` (the index of the current 60-s window).
        self.req = req
        self.tok = tok
        self.stamp = stamp
        self.window = -1


class LimitBook:
    """Requests and tokens per minute for each key, in ``"token_bucket"`` or ``"fixed_window"``
    mode. Times are the upstream's elapsed seconds."""

    def __init__(
        self,
        *,
        mode: str,
        rpm: float | None,
        tpm: float | None,
        bucket_fraction: float,
        count_rejected: bool,
    ) -> None:
        self.mode = mode
        self.bucket_fraction = bucket_fraction
        self.count_rejected = count_rejected
        self.rpm = rpm
        self.tpm = tpm
        self._keys: dict[str, _KeyState] = {}

    @property
    def active(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def set_limits(self, rpm: float | None, tpm: float | None) -> None:
        """New limits from now on; live state is kept (bucket levels clamp to the new size; a
        limit that was off starts full)."""
        if self.mode == "token_bucket":
            for state in self._keys.values():
                if self.rpm is None and rpm is not None:
                    state.req = self._capacity(rpm)
                if self.tpm is None and tpm is not None:
                    state.tok = self._capacity(tpm)
        self.rpm = rpm
        self.tpm = tpm

    def clear(self) -> None:
        self._keys.clear()

    # -- bucket mode ---------------------------------------------------------------------
    def _capacity(self, limit: float) -> float:
        return max(1.0, limit * self.bucket_fraction)

    def _refill(self, state: _KeyState, now: float) -> None:
        elapsed = now - state.stamp
        if elapsed > 0.0:
            if self.rpm is not None:
                state.req = min(self._capacity(self.rpm), state.req + elapsed * self.rpm / _WINDOW)
            if self.tpm is not None:
                state.tok = min(self._capacity(self.tpm), state.tok + elapsed * self.tpm / _WINDOW)
            state.stamp = now
        # A lowered limit takes effect at once.
        if self.rpm is not None:
            state.req = min(state.req, self._capacity(self.rpm))
        if self.tpm is not None:
            state.tok = min(state.tok, self._capacity(self.tpm))

    def _bucket_views(self, state: _KeyState) -> tuple[LimitView | None, LimitView | None]:
        req = tok = None
        if self.rpm is not None:
            full = (self._capacity(self.rpm) - state.req) * _WINDOW / self.rpm
            req = LimitView(self.rpm, max(0.0, math.floor(state.req + _EPS)), max(0.0, full))
        if self.tpm is not None:
            full = (self._capacity(self.tpm) - state.tok) * _WINDOW / self.tpm
            tok = LimitView(self.tpm, max(0.0, math.floor(state.tok + _EPS)), max(0.0, full))
        return req, tok

    # -- window mode ---------------------------------------------------------------------
    def _roll(self, state: _KeyState, now: float) -> float:
        """Start a new window if due; return the seconds until the current one ends."""
        index = math.floor(now / _WINDOW)
        if index != state.window:
            state.window = index
            state.req = 0.0
            state.tok = 0.0
        return (index + 1) * _WINDOW - now

    def _window_views(
        self, state: _KeyState, reset: float
    ) -> tuple[LimitView | None, LimitView | None]:
        req = tok = None
        if self.rpm is not None:
            req = LimitView(self.rpm, max(0.0, math.floor(self.rpm - state.req)), reset)
        if self.tpm is not None:
            tok = LimitView(self.tpm, max(0.0, math.floor(self.tpm - state.tok)), reset)
        return req, tok

    # -- decisions -----------------------------------------------------------------------
    def _state(self, key: str, now: float) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            if self.mode == "token_bucket":
                req = self._capacity(self.rpm) if self.rpm is not None else 0.0
                tok = self._capacity(self.tpm) if self.tpm is not None else 0.0
                state = _KeyState(req, tok, now)
            else:
                state = _KeyState(0.0, 0.0, now)
            self._keys[key] = state
        return state

    def admit(self, key: str, now: float, tokens: float) -> Decision:
        """Admit one request costing ``tokens`` for ``key`` at ``now``, or say why not."""
        state = self._state(key, now)
        if self.mode == "token_bucket":
            return self._admit_bucket(state, now, tokens)
        return self._admit_window(state, now, tokens)

    def _admit_bucket(self, state: _KeyState, now: float, tokens: float) -> Decision:
        rpm, tpm = self.rpm, self.tpm
        self._refill(state, now)
        if tpm is not None and tokens > self._capacity(tpm) + _EPS:
            req, tok = self._bucket_views(state)
            return Decision("too_large", math.inf, req, tok)
        kind = None
        wait = 0.0
        if rpm is not None and state.req < 1.0 - _EPS:
            kind = "requests"
        elif tpm is not None and state.tok < tokens - _EPS:
            kind = "tokens"
        if kind is None:
            if rpm is not None:
                state.req -= 1.0
            if tpm is not None:
                state.tok -= tokens
        else:
            if rpm is not None and self.count_rejected:
                state.req = max(state.req - 1.0, -self._capacity(rpm))
            if rpm is not None and state.req < 1.0:
                wait = (1.0 - state.req) * _WINDOW / rpm
            if tpm is not None and state.tok < tokens:
                wait = max(wait, (tokens - state.tok) * _WINDOW / tpm)
        req, tok = self._bucket_views(state)
        return Decision(kind, wait, req, tok)

    def _admit_window(self, state: _KeyState, now: float, tokens: float) -> Decision:
        rpm, tpm = self.rpm, self.tpm
        reset = self._roll(state, now)
        if tpm is not None and tokens > tpm + _EPS:
            req, tok = self._window_views(state, reset)
            return Decision("too_large", math.inf, req, tok)
        kind = None
        if rpm is not None and state.req + 1.0 > rpm + _EPS:
            kind = "requests"
        elif tpm is not None and state.tok + tokens > tpm + _EPS:
            kind = "tokens"
        if kind is None:
            state.req += 1.0
            state.tok += tokens
        elif self.count_rejected:
            state.req += 1.0
        req, tok = self._window_views(state, reset)
        return Decision(kind, 0.0 if kind is None else reset, req, tok)

    def settle(self, key: str, now: float, delta_tokens: float) -> None:
        """Correct an admitted request's token cost by ``delta_tokens`` (actual - reserved).
        Buckets settle both ways (Anthropic corrects its output estimate); fixed windows only
        charge extra (OpenAI counts ``max_tokens``)."""
        if self.tpm is None or delta_tokens == 0.0:
            return
        state = self._keys.get(key)
        if state is None:
            return
        if self.mode == "token_bucket":
            self._refill(state, now)
            state.tok = min(self._capacity(self.tpm), state.tok - delta_tokens)
        elif delta_tokens > 0.0:
            self._roll(state, now)
            state.tok += delta_tokens

    def view(self, key: str, now: float) -> tuple[LimitView | None, LimitView | None]:
        """(requests, tokens) as the headers would report them for ``key`` now."""
        state = self._state(key, now)
        if self.mode == "token_bucket":
            self._refill(state, now)
            return self._bucket_views(state)
        return self._window_views(state, self._roll(state, now))
