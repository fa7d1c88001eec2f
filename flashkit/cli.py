"""The ``flashkit`` command: run the flashcard pipeline, or serve the simulated upstream.

    flashkit run words.csv --out cards.tsv                       # OpenRouter (key from the env)
    flashkit run words.csv --out cards.tsv --provider sim --profile flaky   # no key, virtual time
    flashkit run words.csv --out cards.tsv --provider openai --base-url http://localhost:8000/v1
    flashkit sim serve --port 8000 --profile flaky --seed 1

``--provider sim`` runs against the in-process simulator in virtual time (an hour of simulated
traffic takes seconds); ``--real-time`` runs it on the wall clock instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from flashkit.clock import Clock, SystemClock, VirtualClock, run_virtual
from flashkit.errors import StructuredError
from flashkit.pipeline import (
    PipelineReport,
    WordResult,
    read_vocabulary,
    run_pipeline,
    write_json,
    write_tsv,
)

__all__ = ["app", "main"]

app = typer.Typer(
    name="flashkit",
    help="Resilient bulk LLM pipelines: Korean vocabulary CSV → study flashcards.",
    no_args_is_help=True,
    add_completion=False,
)
sim_app = typer.Typer(help="The simulated LLM upstream.", no_args_is_help=True)
app.add_typer(sim_app, name="sim")


def _fail(console: Console, message: str) -> typer.Exit:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code=2)


@app.command()
def run(
    words: Annotated[Path, typer.Argument(help="Vocabulary CSV (position,term,type or HSK).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output TSV (one header).")],
    provider: Annotated[
        str, typer.Option(help="sim | openrouter | openai (any OpenAI-compatible server).")
    ] = "openrouter",
    base_url: Annotated[str | None, typer.Option(help="Override the provider's URL.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Model for plain chats (stages use presets).")
    ] = None,
    profile: Annotated[str, typer.Option(help="Simulator fault profile (--provider sim).")] = (
        "flaky"
    ),
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 0,
    concurrency: Annotated[int, typer.Option(min=1, help="Words in flight at once.")] = 8,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N words.")] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the full report as JSON.")
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Skip words already in --out and append to it.")
    ] = False,
    real_time: Annotated[
        bool, typer.Option(help="With --provider sim: wall-clock time, not virtual.")
    ] = False,
) -> None:
    """Run both LLM stages for every word; write cards (TSV) and report failures."""
    console = Console(stderr=True)
    try:
        items = read_vocabulary(words, limit=limit)
    except StructuredError as error:
        raise _fail(console, error.message) from None
    if not items:
        raise _fail(console, f"{words}: no words to process")
    virtual = provider == "sim" and not real_time
    clock: Clock = VirtualClock() if virtual else SystemClock()
    resume_from = out if resume and out.exists() else None

    async def go() -> PipelineReport:
        from flashkit.client import LLMClient

        options: dict[str, Any] = {"provider": provider, "base_url": base_url, "clock": clock}
        if model:
            options["model"] = model
        if provider == "sim" and base_url is None:
            from flashkit.sim import SimulatedUpstream

            upstream = SimulatedUpstream(profile, seed=seed, clock=clock)
            options["transport"] = upstream.transport()
        client = LLMClient(**options)
        with Progress(
            TextColumn("[bold]flashcards"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        ) as progress:
            task = progress.add_task("words", total=len(items), failed=0)
            failed = 0

            def advance(result: WordResult) -> None:
                nonlocal failed
                failed += 0 if result.ok else 1
                progress.update(task, advance=1, failed=failed)

            async with client:
                return await run_pipeline(
                    items,
                    client,
                    concurrency=concurrency,
                    resume_from=resume_from,
                    on_result=advance,
                )

    try:
        report = run_virtual(go(), clock=clock) if isinstance(clock, VirtualClock) else (
            asyncio.run(go())
        )  # fmt: skip
    except StructuredError as error:  # configuration: no key, bad URL, unknown profile
        raise _fail(console, str(error)) from None
    written = write_tsv(report, out, append=resume_from is not None)
    if json_out is not None:
        write_json(report, json_out)
    _summary(console, report, written, out, clock)
    if report.failed:
        raise typer.Exit(code=1)


def _summary(
    console: Console, report: PipelineReport, written: int, out: Path, clock: Clock
) -> None:
    counts = report.summary()
    table = Table(title="flashkit run", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for key in ("words", "succeeded", "failed", "skipped", "cards", "attempts", "tokens"):
        table.add_row(key, str(counts[key]))
    table.add_row("cards written", f"{written} → {out}")
    if isinstance(clock, VirtualClock):
        table.add_row("simulated seconds", f"{clock.now():.1f}")
    console.print(table)
    for result in report.failed[:20]:
        error = (result.error or {}).get("error", {})
        console.print(
            f"[red]failed[/] {result.item.position} {result.item.term}: "
            f"{error.get('code', '?')}: {str(error.get('message', ''))[:160]}",
            highlight=False,
        )
    if len(report.failed) > 20:
        console.print(f"... and {len(report.failed) - 20} more (see --json)")


@sim_app.command("serve")
def sim_serve(
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    profile: Annotated[str, typer.Option(help="Fault profile preset.")] = "flaky",
    seed: Annotated[int, typer.Option(help="Seed for reproducible faults.")] = 0,
) -> None:
    """Serve the simulated upstream over HTTP (an OpenAI-compatible /v1/chat/completions)."""
    from flashkit.sim import serve

    try:
        serve(profile, host=host, port=port, seed=seed)
    except StructuredError as error:
        raise _fail(Console(stderr=True), error.message) from None


def main() -> None:
    """Entry point of the ``flashkit`` script."""
    app(prog_name="flashkit")


if __name__ == "__main__":  # pragma: no cover
    main()
