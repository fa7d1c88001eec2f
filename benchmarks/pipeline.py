"""``flashkit process`` end to end: a 10,000-word list on the ``flaky`` preset in virtual time,
its state in a SQLite file (durable) and in ``sqlite:///:memory:`` (the same run with nothing on
disk), side by side in one run.

Each run is the real command in its own process (``python -m flashkit.cli process LIST
--provider sim --profile flaky --seed 1``); rounds alternate file / memory and which goes
first, and the medians are reported. Measured: wall seconds, peak RSS (the child's
``ru_maxrss``), and the simulated completion time the run reports in ``cards.json``, against
the provider's limit: ``2 × words`` calls at 600 per minute (33.3 minutes for 10,000 words).

Targets: durable ÷ in-memory wall time <= 1.3; simulated completion <= 1.15 × the limit's
ideal. The list is ``../shared/data/hsk_10k.csv`` when present, else 10,000 words made from the
simulator's lexicon.

    python benchmarks/pipeline.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SHARED_LIST = ROOT.parent / "shared" / "data" / "hsk_10k.csv"
RPM = 600.0  # the flaky preset's request limit
TARGET_RATIO = 1.3
TARGET_IDEAL = 1.15


def word_list(words: int, folder: Path) -> Path:
    """The benchmark's list: the shared HSK export, else ``words`` lexicon words."""
    if SHARED_LIST.exists():
        return SHARED_LIST
    from flashkit.sim import lexicon

    entries = lexicon().entries
    path = folder / "words.csv"
    rows = [
        f"{i},{entries[i % len(entries)].term}{i // len(entries) or ''},noun"
        for i in range(1, words + 1)
    ]
    path.write_text("position,term,type\n" + "\n".join(rows) + "\n", "utf-8")
    return path


def run_once(vocabulary: Path, words: int, durable: bool) -> dict[str, Any]:
    """One ``flashkit process`` in a fresh folder and process; its wall time, peak RSS and the
    run's own summary."""
    with tempfile.TemporaryDirectory(prefix="flashkit-bench-") as folder:
        db = "sqlite:///state.db" if durable else "sqlite:///:memory:"
        command = [sys.executable, "-m", "flashkit.cli", "process", str(vocabulary),
                   "--provider", "sim", "--profile", "flaky", "--seed", "1", "--db", db,
                   "-o", "out", "--limit", str(words)]  # fmt: skip
        log = Path(folder) / "stderr.log"  # a file, not a pipe: a full pipe would block the run
        start = time.perf_counter()
        with log.open("w", encoding="utf-8") as stderr:
            proc = subprocess.Popen(  # noqa: S603 - our own command, our own arguments
                command, cwd=folder, stdout=subprocess.DEVNULL, stderr=stderr, text=True
            )
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        errors = log.read_text("utf-8", "replace")
        if proc.returncode != 0:
            raise RuntimeError(f"flashkit process failed ({proc.returncode}): {errors[-2000:]}")
        summary = json.loads((Path(folder) / "out" / "cards.json").read_text("utf-8"))["summary"]
    return {
        "db": "file" if durable else "memory",
        "wall_seconds": wall,
        "peak_rss_mb": usage.ru_maxrss / 1024,
        "simulated_seconds": summary["seconds"],
        "done": summary["done"],
        "failed": summary["failed"],
        "calls": summary["calls"],
    }


def run(quick: bool) -> dict[str, Any]:
    words = 1_000 if quick else 10_000
    rounds = 1 if quick else 2
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        vocabulary = word_list(words, Path(folder))
        for index in range(rounds):
            order = (True, False) if index % 2 == 0 else (False, True)
            rows.extend({"round": index, **run_once(vocabulary, words, d)} for d in order)
    medians = {
        db: {
            key: statistics.median(r[key] for r in rows if r["db"] == db)
            for key in ("wall_seconds", "peak_rss_mb", "simulated_seconds")
        }
        for db in ("file", "memory")
    }
    ideal = 2 * words / RPM * 60.0
    ratio = medians["file"]["wall_seconds"] / medians["memory"]["wall_seconds"]
    vs_ideal = medians["file"]["simulated_seconds"] / ideal
    return {
        "words": words,
        "list": vocabulary.name,
        "rounds": rounds,
        "runs": rows,
        "medians": medians,
        "durable_vs_memory": ratio,
        "ideal_seconds": ideal,
        "completion_vs_ideal": vs_ideal,
        "failed": max(r["failed"] for r in rows),
        "targets": {
            "durable_vs_memory": f"<= {TARGET_RATIO}",
            "completion_vs_ideal": f"<= {TARGET_IDEAL}",
        },
        "targets_met": {
            "durable_vs_memory": ratio <= TARGET_RATIO,
            "completion_vs_ideal": vs_ideal <= TARGET_IDEAL,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 words, one round")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    result = run(args.quick)
    for row in result["runs"]:
        print(
            f"round {row['round']} {row['db']:6s} wall {row['wall_seconds']:6.1f} s  "
            f"rss {row['peak_rss_mb']:5.0f} MB  simulated {row['simulated_seconds']:7.1f} s  "
            f"done {row['done']} failed {row['failed']}"
        )
    print(
        f"durable / in-memory wall: {result['durable_vs_memory']:.2f} (target <= {TARGET_RATIO}); "
        f"completion / ideal {result['ideal_seconds']:.0f} s: "
        f"{result['completion_vs_ideal']:.2f} (target <= {TARGET_IDEAL})"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
