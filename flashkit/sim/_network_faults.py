"""Network faults: how an answer goes over the wire (a :class:`Reply`), what each fault does to
it, and how the in-process transport plays it on the upstream's clock.

A reply is played as: fail before the headers (``before``), or send the status and headers, then
each ``(wait, data)`` of ``chunks`` in turn (``wait`` seconds, then the bytes), then end as
``end`` says: ``"complete"`` (the body is whole), ``"reset"`` (the connection is reset) or
``"stall"`` (no further byte for ``stall_seconds``, then a reset). The same reply is played in
process (:func:`to_response`, below) and over a real socket (:mod:`flashkit.sim._asgi`).

What a client sees (httpx and httpx2 raise the same classes; checked over a real loopback socket):

======================  =========================================  ================================
fault                   in process (httpx transport, the clock)    over ``flashkit sim serve``
======================  =========================================  ================================
refused                 ``ConnectError`` at once                   a ``network_windows`` window:
                                                                   the listening socket is closed,
                                                                   ``connect()`` is refused
                                                                   (``ConnectError``). A rate:
                                                                   see *Approximations*
reset_before_headers    ``ReadError`` after the latency            a TCP RST before any byte
                                                                   (``ReadError``)
reset_mid_body          part of the body (a stream: some chunks),  the same bytes, then an RST
                        then ``ReadError``                         (``ReadError``)
stall_after_headers     ``ReadTimeout`` after the client's read    no byte for ``stall_seconds``,
                        timeout (``request.extensions["timeout"]``  then an RST: the client's read
                        on the clock); without one, ``ReadError``  timeout fires first
                        after ``stall_seconds``                    (``ReadTimeout``)
dribble                 the body in small pieces at                the same pieces on the socket
                        ``dribble_bytes_per_second``: no read
                        timeout fires, only a deadline over the
                        whole exchange (``asyncio.timeout``)
oversized               a valid 200 padded to ``oversized_bytes``  the same bytes
======================  =========================================  ================================

Approximations, honestly:

- A *rate* of refused connections cannot be had from a TCP listener: the kernel completes the
  handshake before the server sees the connection, and the request has been sent before the
  server knows it is the unlucky one. Over the server such a request is reset as soon as it has
  arrived (an RST before any byte): the client sees ``ReadError``, like
  ``reset_before_headers``, not ``ConnectError``. Refusal *windows* are real refusals.
- In process, the client's read timeout applies between chunks and to stalls, not to the
  simulated latency before the headers (which models the provider's work; callers bound it with
  their own deadline, as :class:`~flashkit.client.LLMClient`'s ``attempt_timeout`` does).
- A reset mid-body over a real socket may reach the client before the bytes sent just ahead of
  it (the kernel may drop unread data when the RST arrives): the client sees the ``ReadError``,
  with or without the first chunks.
- Connections refused by a closed listener never reach the simulator, so they are not in its
  statistics; in process every refused request is counted (``network_faults["refused"]``).
- Over a real socket the waits between chunks are on the server's event loop (the system
  clock), whatever the upstream's clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final, Literal, get_args

from flashkit.clock import Clock
from flashkit.sim._http import httpx

__all__ = [
    "NETWORK_FAULTS",
    "Before",
    "Chunks",
    "End",
    "NetworkFault",
    "Reply",
    "SimByteStream",
    "apply_fault",
    "merge",
    "read_timeout",
    "to_response",
    "truncate",
]

NetworkFault = Literal[
    "refused",
    "reset_before_headers",
    "reset_mid_body",
    "stall_after_headers",
    "dribble",
    "oversized",
]
NETWORK_FAULTS: Final[tuple[NetworkFault, ...]] = get_args(NetworkFault)
"""The network faults a :class:`~flashkit.sim.FaultProfile` can inject (``{fault}_rate`` fields
and ``network_windows``)."""

End = Literal["complete", "reset", "stall"]
Before = Literal["refused", "outage", "reset"]
"""Failures before the headers: a refused connection (the fault), an outage's connection
failure (over HTTP a proxy's 503, as before network faults existed), a reset."""
Chunks = tuple[tuple[float, bytes], ...]
"""``(wait seconds, bytes)`` pairs, in order."""

_PIECE: Final = 1 << 20  # bytes per chunk of an oversized body's padding
_DRIBBLE_PIECES_PER_SECOND: Final = 10.0


class Reply:
    """One answer as it goes over the wire (see the module docstring)."""

    __slots__ = ("before", "chunks", "end", "headers", "stall_seconds", "status")

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        chunks: Chunks = (),
        *,
        end: End = "complete",
        before: Before | None = None,
        stall_seconds: float = 0.0,
    ) -> None:
        self.status = status
        self.headers = headers
        self.chunks = chunks
        self.end: End = end
        self.before: Before | None = before
        self.stall_seconds = stall_seconds

    @property
    def plain(self) -> bool:
        """A whole body at once: no wait, no fault (the fast path)."""
        chunks = self.chunks
        return (
            self.before is None
            and self.end == "complete"
            and (not chunks or (len(chunks) == 1 and chunks[0][0] == 0.0))
        )

    @property
    def body(self) -> bytes:
        """All the bytes of the chunks (what a complete delivery sends)."""
        return b"".join(data for _, data in self.chunks)


def merge(chunks: Sequence[tuple[float, bytes]]) -> Chunks:
    """Join each chunk that comes without a wait to the one before it (fewer, larger sends)."""
    merged: list[tuple[float, bytes]] = []
    for wait, data in chunks:
        if merged and wait <= 0.0:
            merged[-1] = (merged[-1][0], merged[-1][1] + data)
        else:
            merged.append((wait, data))
    return tuple(merged)


def truncate(chunks: Sequence[tuple[float, bytes]], u: float) -> list[tuple[float, bytes]]:
    """A prefix of ``chunks`` chosen by ``u`` in [0, 1): of a single body, 20 % to 80 % of its
    bytes; of several chunks (a stream), at least one and not all of them."""
    if len(chunks) == 1:
        wait, data = chunks[0]
        return [(wait, data[: max(1, int(len(data) * (0.2 + 0.6 * u)))])]
    return list(chunks[: 1 + int(u * (len(chunks) - 1))])


def _dribble(chunks: Sequence[tuple[float, bytes]], rate: float) -> list[tuple[float, bytes]]:
    piece = max(1, round(rate / _DRIBBLE_PIECES_PER_SECOND))
    out: list[tuple[float, bytes]] = []
    for wait, data in chunks:
        for start in range(0, len(data), piece):
            part = data[start : start + piece]
            out.append(((wait if start == 0 else 0.0) + len(part) / rate, part))
    return out


def _oversized(
    chunks: Sequence[tuple[float, bytes]], size: int, stream: bool
) -> list[tuple[float, bytes]]:
    """Pad to ``size`` bytes with what parsers skip: JSON whitespace after a plain body, SSE
    comment lines after a stream's first event."""
    missing = size - sum(len(data) for _, data in chunks)
    if missing <= 0:
        return list(chunks)
    if not stream:
        padding = [
            (0.0, b" " * min(_PIECE, missing - start)) for start in range(0, missing, _PIECE)
        ]
        return [*chunks, *padding]
    comments = []
    for start in range(0, missing, _PIECE):
        length = max(0, min(_PIECE, missing - start) - 4)
        comments.append((0.0, b": " + b"x" * length + b"\n\n"))
    return [chunks[0], *comments, *chunks[1:]]


def apply_fault(
    fault: NetworkFault,
    chunks: Sequence[tuple[float, bytes]],
    *,
    stream: bool,
    u: float,
    dribble_rate: float,
    oversized_bytes: int,
) -> tuple[list[tuple[float, bytes]], End]:
    """What ``fault`` does to an answer's ``chunks`` (``u`` in [0, 1) chooses where a cut falls):
    the chunks still sent and how the reply ends. ``refused`` and ``reset_before_headers`` fail
    before the headers and are not applied here."""
    if fault == "reset_mid_body":
        return truncate(chunks, u), "reset"
    if fault == "stall_after_headers":
        # A plain body: nothing after the headers. A stream: a stall between two chunks.
        return (list(chunks[: int(u * len(chunks))]) if stream else []), "stall"
    if fault == "dribble":
        return _dribble(chunks, dribble_rate), "complete"
    if fault == "oversized":
        return _oversized(chunks, oversized_bytes, stream), "complete"
    raise ValueError(f"apply_fault: {fault!r} fails before the headers")


def read_timeout(request: httpx.Request) -> float | None:
    """The client's read timeout in seconds (None: none), as httpx passes it to transports."""
    timeout = request.extensions.get("timeout")
    if isinstance(timeout, dict):
        read = timeout.get("read")
        return float(read) if read is not None else None
    return None


class SimByteStream(httpx.AsyncByteStream):
    """A reply's body played on ``clock``: each chunk after its wait, then the end. A wait longer
    than the client's read timeout raises :class:`httpx.ReadTimeout` when the timeout is up; a
    reset raises :class:`httpx.ReadError`."""

    def __init__(self, reply: Reply, request: httpx.Request, clock: Clock) -> None:
        self.reply = reply
        self.request = request
        self.clock = clock

    async def _wait(self, seconds: float, read: float | None) -> None:
        if read is not None and seconds > read:
            await self.clock.sleep(read)
            raise httpx.ReadTimeout(
                f"simulated: no byte within the read timeout ({read:g} s)", request=self.request
            )
        await self.clock.sleep(seconds)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reply = self.reply
        read = read_timeout(self.request)
        for wait, data in reply.chunks:
            if wait > 0.0:
                await self._wait(wait, read)
            yield data
        if reply.end == "stall":
            await self._wait(reply.stall_seconds, read)
        if reply.end != "complete":
            raise httpx.ReadError(
                "[Errno 104] Connection reset by peer (simulated "
                + ("reset mid-body)" if reply.end == "reset" else "stall ended by the server)"),
                request=self.request,
            )


def to_response(reply: Reply, request: httpx.Request, clock: Clock) -> httpx.Response:
    """The httpx response a real client would get for ``reply``, or the exception it would
    raise before the headers (:class:`httpx.ConnectError`, :class:`httpx.ReadError`).

    A whole body at once (no wait, no fault) comes already read, as from httpx's
    ``MockTransport``: ``.content`` works at once, and so do ``aread``, ``aiter_bytes``,
    ``aiter_text`` and ``aiter_lines`` on a streamed request, but not ``aiter_raw``. Streams and
    bodies broken by a network fault are played as they are read."""
    if reply.before is not None:
        if reply.before == "reset":
            raise httpx.ReadError(
                "[Errno 104] Connection reset by peer (simulated: before the headers)",
                request=request,
            )
        what = "outage" if reply.before == "outage" else "network fault"
        raise httpx.ConnectError(
            f"[Errno 111] Connection refused (simulated {what})", request=request
        )
    if reply.plain:
        content = reply.chunks[0][1] if reply.chunks else b""
        return httpx.Response(reply.status, headers=reply.headers, content=content, request=request)
    stream = SimByteStream(reply, request, clock)
    return httpx.Response(reply.status, headers=reply.headers, stream=stream, request=request)
