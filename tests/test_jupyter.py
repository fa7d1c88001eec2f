"""The Jupyter side as a person meets it: `make lab` and `make dashboard` answer on loopback, and
the breaker dashboard works in a real browser (Debian's Chromium driven by Playwright: never a
downloaded browser build). Servers are started through the Makefile, read until they say where
they listen, and stopped with their whole process group."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
READY_SECONDS = 180.0  # a cold JupyterLab or a first kernel start on a loaded 2-core machine


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def make_serve(target: str, ready: str, *extra: str) -> Iterator[str]:
    """Run ``make <target>`` on a free port until its log prints a URL matching ``ready``;
    yield that URL; then stop the server and everything it started."""
    port = free_port()
    process = subprocess.Popen(
        ["make", "-s", target, f"PORT={port}", *extra],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,  # never the test runner's stdin: a server must not wait on it
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    pattern = re.compile(ready.replace("PORT", str(port)))
    log: list[str] = []
    try:
        while True:
            line = lines.get(timeout=READY_SECONDS)
            if line is None:
                raise AssertionError(f"make {target} ended before it listened:\n{''.join(log)}")
            log.append(line)
            if found := pattern.search(line):
                break
        # Jupyter logs its URL a moment before it binds: connect until it accepts (a refused
        # connect returns at once; the log queue's timed get paces the attempts).
        deadline = time.monotonic() + READY_SECONDS
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except ConnectionRefusedError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"make {target} never accepted:\n{''.join(log)}") from None
                if (more := _next_line(lines, 0.05)) is not None:
                    log.append(more)
        yield found.group(0)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reader.join(timeout=30)  # the pipe ends with the process group
        assert process.stdout is not None
        process.stdout.close()


def _next_line(lines: queue.Queue[str | None], seconds: float) -> str | None:
    try:
        return lines.get(timeout=seconds)
    except queue.Empty:
        return None


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=120) as response:  # noqa: S310 - loopback only
        assert response.status == 200
        return str(response.read().decode("utf-8", "replace"))


def test_make_lab_serves_jupyterlab_with_the_flashkit_kernel() -> None:
    with make_serve("lab", r"http://127\.0\.0\.1:PORT/lab\?token=\w+") as url:
        assert "JupyterLab" in fetch(url)
        token = url.split("token=", 1)[1]
        specs = fetch(url.replace("/lab?", "/api/kernelspecs?"))
        assert '"flashkit"' in specs, specs[:500]
        assert token


def test_make_dashboard_serves_the_dashboards() -> None:
    """Voila answers on loopback with its page of the dashboards (each one is rendered, and
    driven, in the browser test below: a plain HTTP read of a render never ends, Voila keeps
    streaming to a page that will not connect)."""
    with make_serve("dashboard", r"http://127\.0\.0\.1:PORT/") as url:
        assert "Voil" in fetch(url)


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        reason = "no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


def test_the_breaker_dashboard_answers_its_slider_in_a_real_browser(chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    shots = ROOT / "reports"
    shots.mkdir(exist_ok=True)
    with (
        make_serve("dashboard", r"http://127\.0\.0\.1:PORT/") as url,
        sync_playwright() as playwright,
    ):
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            # Voila streams the page as the kernel runs: wait for the plot, not for "load".
            page.goto(url + "voila/render/breaker.ipynb", wait_until="commit")
            plot = page.locator(".jp-OutputArea-output img").first
            plot.wait_for(timeout=READY_SECONDS * 1000)
            summary = page.locator("table.dataframe").first
            before_plot = plot.get_attribute("src")
            before_table = summary.inner_text()
            assert "trips" in before_table

            threshold = page.locator(".widget-slider", has_text="failure threshold")
            threshold.locator(".noUi-handle").focus()
            page.keyboard.press("Home")  # the lowest threshold: the brownout now trips it
            page.wait_for_function(
                "old => document.querySelector('.jp-OutputArea-output img').src !== old",
                arg=before_plot,
                timeout=READY_SECONDS * 1000,
            )
            assert threshold.locator(".widget-readout").inner_text().strip() == "0.05"
            after_table = page.locator("table.dataframe").first.inner_text()
            assert after_table != before_table
            page.screenshot(path=str(shots / "breaker-dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert (shots / "breaker-dashboard.png").stat().st_size > 10_000


def test_the_report_opens_on_the_success_metrics_table(chromium: str, tmp_path: Path) -> None:
    """A reader of reports/index.html sees the before / after / peer verdicts first."""
    from playwright.sync_api import sync_playwright

    from flashkit.report import run_report

    report = run_report(smoke=True, only=["success_flaky"], output_dir=tmp_path, root=ROOT)
    assert report.ok, [entry.error for entry in report.entries]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(report.index.as_uri())
            table = page.locator("table").first
            assert "error_rate" in table.inner_text()
            assert "before" in table.inner_text()
            assert "peer" in table.inner_text()
            box = table.bounding_box()
            assert box is not None
            assert box["y"] < 800  # it starts in the first screen
            link = page.locator("a[href='success_flaky.html']")
            assert link.count() == 1
            link.click()
            page.locator("a[href='index.html']").first.wait_for()  # the page links back
        finally:
            browser.close()
