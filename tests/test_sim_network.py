"""Network faults of flashkit.sim: one test per fault in process (the httpx transport on virtual
time) and one over a real ``flashkit sim serve`` (the fault on the socket).

Each call runs under a deadline (``ATTEMPT`` seconds, as a client's attempt timeout would) and the
test asserts the class of the exception the client sees: a call that hung would end in the
deadline's ``TimeoutError`` instead and fail the assertion. In process the times asserted are
virtual seconds read from the clock. Over the server nothing is timed: the client's read timeout
(``READ``) and the deadline are the only waits, and the faults last far longer (a stall of 300 s,
a body dribbled over minutes), so which one ends the call does not depend on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx2
import pytest
from _sim_http import serving, serving_server
from _sim_serve import INSTANT as INSTANT_SET
from _sim_serve import sim_serve

from flashkit.clock import VirtualClock, run_virtual
from flashkit.errors import ValidationError
from flashkit.sim import NETWORK_FAULTS, FaultProfile, SimulatedUpstream

T = TypeVar("T")
KEY = "sk-network-test"
LATENCY = 2.0  # seconds, in process: every answer takes exactly this long
FIXED = FaultProfile(latency_median=LATENCY, latency_p99=LATENCY, reject_latency=0.0)
ATTEMPT = 30.0  # seconds: the deadline over one call (the client's attempt timeout)
READ = 1.0  # seconds: the httpx read timeout over the server
BODY = {"model": "gpt-sim", "messages": [{"role": "user", "content": "hello over the network"}]}


def virtual(factory: Callable[[VirtualClock], Awaitable[T]]) -> T:
    clock = VirtualClock()

    async def main() -> T:
        return await factory(clock)

    return run_virtual(main(), clock=clock)


async def call(client: httpx2.AsyncClient, stream: bool, deadline: float = ATTEMPT) -> bytes:
    """One chat call, its whole body read, under ``deadline`` seconds."""
    async with asyncio.timeout(deadline):
        request = client.build_request("POST", "/chat/completions", json={**BODY, "stream": stream})
        response = await client.send(request, stream=True)
        try:
            return b"".join([chunk async for chunk in response.aiter_bytes()])
        finally:
            await response.aclose()


def in_process(
    fault: str,
    stream: bool,
    *,
    timeout: httpx2.Timeout | None = None,
    deadline: float = ATTEMPT,
    **changes: Any,
) -> tuple[BaseException | bytes, float, SimulatedUpstream]:
    """One call, under ``deadline`` seconds, to an upstream whose every answer has ``fault``:
    what the client got (the exception, or the body), the virtual seconds it took, and the
    upstream."""
    profile = dataclasses.replace(FIXED, **{f"{fault}_rate": 1.0, **changes})

    async def run(clock: VirtualClock) -> tuple[BaseException | bytes, float, SimulatedUpstream]:
        upstream = SimulatedUpstream(profile, clock=clock)
        async with httpx2.AsyncClient(
            transport=upstream.transport(),
            base_url="http://sim/v1",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=timeout if timeout is not None else httpx2.Timeout(60.0),
        ) as client:
            try:
                outcome: BaseException | bytes = await call(client, stream, deadline)
            except (httpx2.TransportError, TimeoutError) as error:
                outcome = error
        return outcome, clock.now(), upstream

    return virtual(run)


def clean(stream: bool) -> bytes:
    """The body of the same call without a fault."""
    outcome, _, _ = in_process("oversized", stream, oversized_rate=0.0)
    assert isinstance(outcome, bytes)
    return outcome


def sse_text(body: bytes) -> str:
    """The text of a chat-completions stream (comment lines skipped)."""
    text = ""
    for line in body.decode().split("\n"):
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                text += choice["delta"].get("content", "")
    return text


# --- the profile --------------------------------------------------------------------------


def test_network_fault_fields_are_validated() -> None:
    assert NETWORK_FAULTS == (
        "refused",
        "reset_before_headers",
        "reset_mid_body",
        "stall_after_headers",
        "dribble",
        "oversized",
    )
    FaultProfile(network_windows=((0.0, 10.0, "refused"), (20.0, 30.0, "dribble")))
    bad: list[dict[str, Any]] = [
        {"refused_rate": 1.5},
        {"reset_mid_body_rate": 0.6, "dribble_rate": 0.6},
        {"network_windows": ((0.0, 10.0, "lost"),)},
        {"network_windows": ((10.0, 0.0, "refused"),)},
        {"network_windows": ((0.0, 10.0),)},
        {"stall_seconds": 0.0},
        {"dribble_bytes_per_second": -1.0},
        {"oversized_bytes": 0},
        {"first_token_fraction": 2.0},
    ]
    for changes in bad:
        with pytest.raises(ValidationError):
            FaultProfile(**changes)


def test_network_windows_are_not_random_draws() -> None:
    """A window (here one that never opens) draws nothing: same seed, same answers as
    without it."""
    far = ((1e6, 2e6, "dribble"), (1e6, 2e6, "refused"))

    async def run(clock: VirtualClock) -> list[bytes]:
        bodies = []
        for profile in ("flaky", FaultProfile.preset("flaky", network_windows=far)):
            upstream = SimulatedUpstream(profile, seed=5, clock=clock)
            async with httpx2.AsyncClient(
                transport=upstream.transport(),
                base_url="http://sim/v1",
                headers={"Authorization": f"Bearer {KEY}"},
            ) as client:
                bodies += [
                    (await client.post("/chat/completions", json=BODY)).content for _ in range(20)
                ]
        return bodies

    bodies = virtual(run)
    assert bodies[:20] == bodies[20:]


def test_network_fault_rates_are_drawn_per_request() -> None:
    """About the configured fraction of answers gets each fault, counted by kind."""
    profile = FaultProfile(
        latency_median=0.0,
        latency_p99=0.0,
        reject_latency=0.0,
        refused_rate=0.1,
        reset_mid_body_rate=0.2,
        oversized_rate=0.1,
        oversized_bytes=2_000,
    )

    async def run(clock: VirtualClock) -> SimulatedUpstream:
        upstream = SimulatedUpstream(profile, seed=1, clock=clock)
        async with httpx2.AsyncClient(
            transport=upstream.transport(),
            base_url="http://sim/v1",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as client:
            for _ in range(1000):
                with contextlib.suppress(httpx2.TransportError):
                    await call(client, stream=False)
        return upstream

    stats = virtual(run).stats
    faults = stats.network_faults
    assert abs(faults["refused"] - 100) < 40
    assert abs(faults["reset_mid_body"] - 0.2 * 900) < 60
    assert abs(faults["oversized"] - 0.1 * 900) < 40
    assert stats.ok + sum(faults.values()) == 1000
    assert stats.to_dict()["network_faults"] == dict(sorted(faults.items()))


# --- in process, one test per fault ---------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_refused_in_process_is_a_connect_error_at_once(stream: bool) -> None:
    """Nothing reaches the model or the limits: ConnectError at once, counted as refused."""
    outcome, elapsed, upstream = in_process("refused", stream, rpm=10)
    assert isinstance(outcome, httpx2.ConnectError)
    assert elapsed == 0.0
    assert upstream.stats.network_faults == {"refused": 1}
    assert upstream.rate_limit_headers(KEY)["x-ratelimit-remaining-requests"] == "10"


def test_refused_window_in_process() -> None:
    """In a ``"refused"`` window every request is refused; before and after it, answered."""
    profile = dataclasses.replace(FIXED, network_windows=((10.0, 20.0, "refused"),))

    async def run(clock: VirtualClock) -> list[str]:
        upstream = SimulatedUpstream(profile, clock=clock)
        outcomes = []
        async with httpx2.AsyncClient(
            transport=upstream.transport(),
            base_url="http://sim/v1",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as client:
            for at in (5.0, 10.0, 19.0, 20.0):
                await asyncio.sleep(at - clock.now())
                try:
                    await call(client, stream=False)
                    outcomes.append("ok")
                except httpx2.ConnectError:
                    outcomes.append("refused")
        return outcomes

    assert virtual(run) == ["ok", "refused", "refused", "ok"]


@pytest.mark.parametrize("stream", [False, True])
def test_reset_before_headers_in_process_is_a_read_error(stream: bool) -> None:
    outcome, elapsed, upstream = in_process("reset_before_headers", stream)
    assert isinstance(outcome, httpx2.ReadError)
    assert not isinstance(outcome, httpx2.TimeoutException)
    # After the answer's latency (a stream: its time to first token).
    assert elapsed == pytest.approx(LATENCY * (FIXED.first_token_fraction if stream else 1.0))
    assert upstream.stats.network_faults == {"reset_before_headers": 1}
    assert upstream.stats.by_status == {}


@pytest.mark.parametrize("stream", [False, True])
def test_reset_mid_body_in_process_is_a_read_error_after_some_bytes(stream: bool) -> None:
    profile = dataclasses.replace(FIXED, reset_mid_body_rate=1.0)

    async def run(clock: VirtualClock) -> tuple[bytes, BaseException | None]:
        upstream = SimulatedUpstream(profile, clock=clock)
        received = b""
        async with httpx2.AsyncClient(
            transport=upstream.transport(),
            base_url="http://sim/v1",
            headers={"Authorization": f"Bearer {KEY}"},
        ) as client:
            try:
                async with asyncio.timeout(ATTEMPT):
                    request = client.build_request(
                        "POST", "/chat/completions", json={**BODY, "stream": stream}
                    )
                    response = await client.send(request, stream=True)
                    async for data in response.aiter_bytes():
                        received += data
            except (httpx2.TransportError, TimeoutError) as error:
                return received, error
        return received, None

    received, error = virtual(run)
    assert isinstance(error, httpx2.ReadError)
    whole = clean(stream)
    assert 0 < len(received) < len(whole)
    assert whole.startswith(received)
    if stream:
        assert received.endswith(b"\n\n")  # reset between two events


@pytest.mark.parametrize("stream", [False, True])
def test_stall_after_headers_in_process_is_a_read_timeout(stream: bool) -> None:
    """No byte after the headers (a stream: after some chunks): the client's read timeout
    fires, on the virtual clock, long before the server would give up."""
    timeout = httpx2.Timeout(60.0, read=7.0)
    outcome, elapsed, upstream = in_process("stall_after_headers", stream, timeout=timeout)
    assert isinstance(outcome, httpx2.ReadTimeout)
    assert elapsed < FIXED.stall_seconds
    if not stream:
        assert elapsed == pytest.approx(LATENCY + 7.0)
    assert upstream.stats.network_faults == {"stall_after_headers": 1}


def test_stall_without_a_read_timeout_ends_when_the_server_gives_up() -> None:
    """Without a read timeout the server closes the connection after ``stall_seconds``; with
    only an attempt deadline, the deadline ends the call first."""
    no_read = httpx2.Timeout(None)
    outcome, elapsed, _ = in_process(
        "stall_after_headers", False, timeout=no_read, stall_seconds=20.0
    )
    assert isinstance(outcome, httpx2.ReadError)
    assert elapsed == pytest.approx(LATENCY + 20.0)

    async def run(clock: VirtualClock) -> tuple[BaseException | bytes, float]:
        upstream = SimulatedUpstream(dataclasses.replace(FIXED, stall_after_headers_rate=1.0))
        async with httpx2.AsyncClient(
            transport=upstream.transport(),
            base_url="http://sim/v1",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=no_read,
        ) as client:
            try:
                return await call(client, stream=True), clock.now()
            except TimeoutError as error:
                return error, clock.now()

    deadline, at = virtual(run)
    assert isinstance(deadline, TimeoutError)
    assert at == pytest.approx(ATTEMPT)


@pytest.mark.parametrize("stream", [False, True])
def test_dribble_in_process_escapes_read_timeouts_not_a_deadline(stream: bool) -> None:
    """The whole body arrives, bytes at a time: no read timeout fires (1 s here), it takes
    len(body) / rate seconds (minutes); a deadline over the whole call ends it."""
    rate = 5.0
    timeout = httpx2.Timeout(60.0, read=1.0)
    outcome, elapsed, _ = in_process(
        "dribble", stream, timeout=timeout, dribble_bytes_per_second=rate, deadline=3600.0
    )
    assert isinstance(outcome, bytes)
    assert outcome == clean(stream)
    first = LATENCY * (FIXED.first_token_fraction if stream else 1.0)
    # A stream's own gaps come on top of the trickle.
    extra = LATENCY - first if stream else 0.0
    assert elapsed == pytest.approx(first + len(outcome) / rate + extra)
    assert elapsed > ATTEMPT

    async def run(clock: VirtualClock) -> BaseException | bytes:
        profile = dataclasses.replace(FIXED, dribble_rate=1.0, dribble_bytes_per_second=rate)
        upstream = SimulatedUpstream(profile, clock=clock)
        async with httpx2.AsyncClient(
            transport=upstream.transport(),
            base_url="http://sim/v1",
            headers={"Authorization": f"Bearer {KEY}"},
            timeout=timeout,
        ) as client:
            try:
                return await call(client, stream)
            except (httpx2.TransportError, TimeoutError) as error:
                return error

    assert isinstance(virtual(run), TimeoutError)


@pytest.mark.parametrize("stream", [False, True])
def test_oversized_in_process_is_a_valid_padded_body(stream: bool) -> None:
    size = 300_000
    outcome, _, upstream = in_process("oversized", stream, oversized_bytes=size)
    assert isinstance(outcome, bytes)
    assert len(outcome) == size
    whole = clean(stream)
    if stream:
        assert sse_text(outcome) == sse_text(whole)
    else:
        assert json.loads(outcome) == json.loads(whole)
    assert upstream.stats.network_faults == {"oversized": 1}


# --- over a real `flashkit sim serve`, one test per fault -----------------------------------


async def over_server(base_url: str, stream: bool) -> BaseException | bytes:
    """One call over the socket with a READ-second read timeout under the ATTEMPT deadline."""
    async with httpx2.AsyncClient(
        base_url=f"{base_url}/v1",
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=httpx2.Timeout(ATTEMPT, read=READ),
    ) as client:
        try:
            return await call(client, stream)
        except (httpx2.TransportError, TimeoutError) as error:
            return error


SERVER_CASES = {
    # fault: (--set values, the exception a client sees)
    "refused (window)": (('network_windows=[[0, 86400, "refused"]]',), httpx2.ConnectError),
    # A rate of refusals cannot be had from a TCP listener: reset as soon as it has arrived.
    "refused (rate)": (("refused_rate=1",), httpx2.ReadError),
    "reset_before_headers": (("reset_before_headers_rate=1",), httpx2.ReadError),
    "reset_mid_body": (("reset_mid_body_rate=1",), httpx2.ReadError),
    "stall_after_headers": (("stall_after_headers_rate=1",), httpx2.ReadTimeout),
}


@pytest.mark.parametrize("case", list(SERVER_CASES))
def test_network_fault_over_the_server(case: str) -> None:
    """Plain and streamed calls each end in the exception class of the fault, before the
    deadline (a hung call would raise TimeoutError instead); the server still answers after."""
    pairs, expected = SERVER_CASES[case]
    with sim_serve("healthy", *INSTANT_SET, *pairs) as base_url:
        outcomes = [asyncio.run(over_server(base_url, stream)) for stream in (False, True)]
        if case != "refused (window)":
            stats = httpx2.get(f"{base_url}/_sim/stats", timeout=10.0).json()["stats"]
            assert sum(stats["network_faults"].values()) == 2
    for outcome in outcomes:
        assert type(outcome) is expected, f"{case}: {outcome!r}"


def test_dribble_over_the_server_is_ended_by_the_deadline_only() -> None:
    """The body trickles (20 bytes/s: minutes for the whole body): the 1 s read timeout never
    fires, the deadline over the call does."""
    pairs = ("dribble_rate=1", "dribble_bytes_per_second=20")
    with sim_serve("healthy", *INSTANT_SET, *pairs) as base_url:

        async def run(stream: bool) -> BaseException | bytes:
            async with httpx2.AsyncClient(
                base_url=f"{base_url}/v1",
                headers={"Authorization": f"Bearer {KEY}"},
                timeout=httpx2.Timeout(ATTEMPT, read=READ),
            ) as client:
                try:
                    return await call(client, stream, deadline=2 * READ)
                except (httpx2.TransportError, TimeoutError) as error:
                    return error

        outcomes = [asyncio.run(run(stream)) for stream in (False, True)]
    assert [type(outcome) for outcome in outcomes] == [TimeoutError, TimeoutError]


def test_oversized_over_the_server_is_a_valid_padded_body() -> None:
    size = 2_000_000
    pairs = ("oversized_rate=1", f"oversized_bytes={size}")
    with sim_serve("healthy", *INSTANT_SET, *pairs) as base_url:
        plain, streamed = (asyncio.run(over_server(base_url, stream)) for stream in (False, True))
    assert isinstance(plain, bytes)
    assert isinstance(streamed, bytes)
    assert len(plain) == size
    assert len(streamed) == size
    assert json.loads(plain)["choices"][0]["message"]["content"] == sse_text(streamed)


# --- the server's machinery, in this process (uvicorn in a thread) --------------------------


@pytest.mark.parametrize("fault", ["reset_before_headers", "reset_mid_body", "refused"])
def test_resets_are_tcp_resets_in_the_threaded_server(fault: str) -> None:
    """The same server class as ``flashkit sim serve``, here in a thread: a reset (and a
    refused rate, its approximation) is an RST: ReadError, plain and streamed."""
    profile = FaultProfile(
        latency_median=0.0, latency_p99=0.0, reject_latency=0.0, **{f"{fault}_rate": 1.0}
    )
    upstream = SimulatedUpstream(profile)
    with serving(upstream) as base_url:
        outcomes = [asyncio.run(over_server(base_url, stream)) for stream in (False, True)]
    assert [type(outcome) for outcome in outcomes] == [httpx2.ReadError, httpx2.ReadError]
    assert upstream.stats.network_faults == {fault: 2}


def test_refusal_windows_close_and_reopen_the_listener() -> None:
    """On the upstream's clock (virtual here, moved by hand): before a ``"refused"`` window the
    server answers, inside it connect() is refused, after it the same port answers again."""
    clock = VirtualClock()
    profile = FaultProfile(
        latency_median=0.0,
        latency_p99=0.0,
        reject_latency=0.0,
        network_windows=((10.0, 20.0, "refused"),),
    )
    upstream = SimulatedUpstream(profile, clock=clock)

    def status(base_url: str) -> int | str:
        # A new client each time: the listener is under test, not a kept-alive connection.
        with httpx2.Client(timeout=10.0) as client:
            try:
                url = f"{base_url}/v1/chat/completions"
                auth = {"Authorization": f"Bearer {KEY}"}
                return client.post(url, json=BODY, headers=auth).status_code
            except httpx2.ConnectError:
                return "refused"

    with serving_server(upstream) as (base_url, server):
        assert server.loop is not None

        def follow() -> None:
            future = asyncio.run_coroutine_threadsafe(server.follow_windows(), server.loop)
            future.result(timeout=10.0)

        seen = [status(base_url)]
        for at in (10.0, 20.0):
            clock.advance(at - clock.now())
            follow()
            seen.append(status(base_url))
    assert seen == [200, "refused", 200]
