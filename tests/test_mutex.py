"""flashkit._mutex.Mutex: the limiters' lock excludes, blocks, and works as a context manager."""

from __future__ import annotations

import sys
import threading

from flashkit._mutex import Mutex


def test_threads_never_interleave_inside_the_mutex() -> None:
    mutex = Mutex()
    state = {"n": 0, "inside": 0, "overlaps": 0}
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible

    def work() -> None:
        for _ in range(2000):
            mutex.acquire()
            try:
                state["inside"] += 1
                if state["inside"] > 1:
                    state["overlaps"] += 1
                value = state["n"]
                state["n"] = value + 1
                state["inside"] -= 1
            finally:
                mutex.release()

    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old)
    assert state == {"n": 16000, "inside": 0, "overlaps": 0}


def test_a_held_mutex_blocks_until_released() -> None:
    mutex = Mutex()
    entered = threading.Event()

    def other() -> None:
        with mutex:
            entered.set()

    mutex.acquire()
    thread = threading.Thread(target=other)
    thread.start()
    assert not entered.is_set()  # it cannot have entered: the one token is ours
    mutex.release()
    assert entered.wait(timeout=30)
    thread.join()
    assert mutex.qsize() == 1  # the token is back


def test_with_gives_the_token_back_on_an_error() -> None:
    mutex = Mutex()
    try:
        with mutex:
            raise ValueError("inside")
    except ValueError:
        pass
    assert mutex.qsize() == 1
