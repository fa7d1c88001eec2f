"""What ``flashkit process`` shows while it runs: a live rich display on a terminal, plain
lines every few seconds otherwise. User text is never read as rich markup."""

from __future__ import annotations

import math
import time
from typing import Any, Final

from rich.console import Console
from rich.live import Live
from rich.text import Text

from flashkit.client import LLMClient
from flashkit.clock import Clock
from flashkit.errors import ErrorCategory, StructuredError
from flashkit.flashcards.pipeline import RunProgress
from flashkit.retry import RetryEvent

__all__ = ["Display", "format_seconds"]

PLAIN_INTERVAL: Final = 5.0  # wall seconds between plain progress lines


def format_seconds(seconds: float) -> str:
    """``95`` → ``1m35s``; ``3725`` → ``1h02m``."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


class Display:
    """Shows a run's :class:`RunProgress`: ``start()``, ``update()`` as words finish and on a
    timer, ``stop()``. Counts 429s through :meth:`on_retry` (a retry hook)."""

    def __init__(
        self, console: Console, progress: RunProgress, clock: Clock, *, virtual: bool
    ) -> None:
        self.console = console
        self.progress = progress
        self.clock = clock
        self.virtual = virtual
        self.client: LLMClient | None = None
        self.rate_limited = 0
        self._live: Live | None = None
        self._last_line = -math.inf
        self._wall_start = time.monotonic()

    def on_retry(self, event: RetryEvent) -> None:
        error = event.error
        if isinstance(error, StructuredError) and error.category is ErrorCategory.RATE_LIMIT:
            self.rate_limited += 1

    def parts(self) -> tuple[str, str]:
        """(counts, rates): done / failed / total and in flight; rate, ETA, breaker, limiter
        waits, 429s and the clock."""
        p = self.progress
        elapsed = self.clock.now() - p.started
        rate = p.finished / elapsed if elapsed > 1e-3 else 0.0
        left = max(p.total - p.finished, 0)
        eta = left / rate if rate > 0 else math.inf
        breaker = "off"
        if self.client is not None and self.client.breaker is not None:
            breaker = self.client.breaker.state.value
        clock = "simulated" if self.virtual else "elapsed"
        counts = f"{p.done}/{p.total} done, {p.failed} failed, {p.in_flight} in flight"
        speed = f"{rate * 60:.0f} words/min" if rate else "- words/min"
        rates = (
            f"{speed}, ETA {format_seconds(eta) if left else '0s'}, breaker {breaker}, "
            f"limiter waits {format_seconds(p.limiter_wait)}, 429s {self.rate_limited}, "
            f"{clock} {format_seconds(elapsed)}"
        )
        return counts, rates

    def line(self) -> str:
        """The progress as one line (for logs)."""
        return ", ".join(self.parts())

    def start(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)
        if self.console.is_terminal:
            self._live = Live(
                self._render(), console=self.console, refresh_per_second=4, transient=True
            )
            self._live.start()

    def _render(self) -> Any:
        p = self.progress
        width = 30
        share = p.finished / p.total if p.total else 1.0
        filled = round(share * width)
        text = Text()
        text.append("flashcards ", style="bold")
        text.append("█" * filled, style="green")
        text.append("░" * (width - filled), style="dim")
        counts, rates = self.parts()
        text.append(f" {share:4.0%}  {counts}\n{rates}")
        return text

    def update(self, *, force: bool = False) -> None:
        if self._live is not None:
            self._live.update(self._render())
            return
        now = time.monotonic()
        if force or now - self._last_line >= PLAIN_INTERVAL:
            self._last_line = now
            self.console.print(f"progress: {self.line()}", markup=False, highlight=False)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        self.console.print(f"finished: {self.line()}", markup=False, highlight=False)
