"""The ``flashkit`` command.

    flashkit process words.csv                          # OpenRouter (key from the environment)
    flashkit process words.csv --provider sim --profile llm_realistic    # no key, virtual time
    flashkit process words.csv --provider openai --base-url http://127.0.0.1:8000/v1
    flashkit status | flashkit export -o out | flashkit config show
    flashkit sim serve --port 8000 --profile flaky

Exit codes: 0 every word done, 1 some words failed, 2 bad input or usage, 130 / 143 interrupted
(SIGINT / SIGTERM: the words done so far are kept; the same command continues).
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import flashkit
from flashkit.cli._display import format_seconds
from flashkit.cli._outputs import Exporter, plan_outputs
from flashkit.cli._process import Job, check_client, dry_run, prepare_sim, run_job, summary
from flashkit.config import load_settings
from flashkit.db import DEFAULT_URL, make_engine, sqlite_path
from flashkit.errors import StructuredError, ValidationError
from flashkit.flashcards.export import FORMATS
from flashkit.flashcards.store import Store
from flashkit.flashcards.vocabulary import read_vocabulary

__all__ = ["app", "main"]

app = typer.Typer(
    name="flashkit",
    help="Resilient bulk LLM pipelines: Korean vocabulary CSV → study flashcards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
sim_app = typer.Typer(help="The simulated LLM upstream.", no_args_is_help=True,
                      rich_markup_mode=None)  # fmt: skip
config_app = typer.Typer(help="The settings a run uses.", no_args_is_help=True,
                         rich_markup_mode=None)  # fmt: skip
app.add_typer(sim_app, name="sim")
app.add_typer(config_app, name="config")


def _console() -> Console:
    return Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print ``error: message`` (never read as markup) and return the exit to raise."""
    _console().print(f"error: {message}", style="bold red", markup=False, highlight=False)
    return typer.Exit(code=code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"flashkit {flashkit.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Resilient bulk LLM pipelines: Korean vocabulary CSV → study flashcards."""


def _overrides(**options: Any) -> dict[str, Any]:
    """Command-line options that were given, as settings keys."""
    return {f"run.{name}": value for name, value in options.items() if value is not None}


@app.command("process")
def process_command(
    vocab: Annotated[Path, typer.Argument(help="Vocabulary CSV (position,term,type or HSK).")],
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Output folder (default ./output).")
    ] = None,
    db: Annotated[
        str | None, typer.Option(help=f"State database URL (default {DEFAULT_URL}).")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("-b", "--batch-size", min=1, max=10_000, help="Words in flight (50)."),
    ] = None,
    provider: Annotated[
        str | None, typer.Option(help="openrouter (default) | openai | anthropic | sim.")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="The provider's URL (…/v1).")] = None,
    model: Annotated[str | None, typer.Option(help="Model for plain chats.")] = None,
    profile: Annotated[
        str | None, typer.Option(help="Simulator fault profile (--provider sim; flaky).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the simulator and jitter.")] = None,
    real_time: Annotated[
        bool, typer.Option("--real-time", help="--provider sim in process on the wall clock.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N words of the list.")
    ] = None,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Retry only the words that failed before.")
    ] = False,
    dry_run_: Annotated[
        bool, typer.Option("--dry-run", help="Check everything, print the plan, send nothing.")
    ] = False,
    redis: Annotated[
        str | None, typer.Option(help="Redis URL: share the provider's limit across processes.")
    ] = None,
    cache: Annotated[
        str | None,
        typer.Option(help="Answers cache URL (default: the state database; redis://… shares it)."),
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Do not cache answers.")] = False,
    encoding: Annotated[
        str | None, typer.Option(help="The CSV's encoding (default UTF-8), e.g. cp949.")
    ] = None,
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Process the valid rows, list the others.")
    ] = False,
    config: Annotated[
        Path | None, typer.Option(help="Settings file (default ./flashkit.toml if present).")
    ] = None,
    tsv: Annotated[Path | None, typer.Option(help="TSV path (default DIR/cards.tsv).")] = None,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="JSON path (default DIR/cards.json).")
    ] = None,
    apkg: Annotated[Path | None, typer.Option(help="Anki deck (default DIR/deck.apkg).")] = None,
) -> None:
    """Generate flashcards for every word of VOCAB: two LLM calls per word, state in a
    database (a killed run loses at most its calls in flight; the same command continues),
    cards in DIR/cards.tsv (Anki), cards.json and deck.apkg."""
    console = _console()
    try:
        overrides = _overrides(
            output=str(output) if output is not None else None, db=db, batch_size=batch_size,
            provider=provider, base_url=base_url, model=model, profile=profile, seed=seed,
            redis=redis,
        )  # fmt: skip
        if cache is not None:
            overrides["cache.url"] = cache
        if no_cache:
            overrides["cache.enabled"] = False
        settings = load_settings(config_file=config, overrides=overrides)
        vocabulary = read_vocabulary(
            vocab, encoding=encoding, limit=limit, skip_invalid=skip_invalid
        )
        inputs = {"the vocabulary file": vocab}
        if config is not None:
            inputs["the settings file"] = config
        outputs = plan_outputs(
            Path(settings.run.output), tsv=tsv, json=json_path, apkg=apkg, inputs=inputs,
            db=settings.run.db,
        )  # fmt: skip
        for row in vocabulary.invalid:
            console.print(f"skipped: {row.message}", markup=False)
        upstream, virtual = None, False
        if settings.run.provider == "sim":
            settings, upstream, virtual = prepare_sim(settings, real_time=real_time)
        job = Job(vocabulary, vocabulary.items, settings, outputs, retry_failed, virtual, upstream)
        check_client(job)
        if dry_run_:
            store = _read_only_store(settings.run.db)
            try:
                raise typer.Exit(dry_run(console, job, store))
            finally:
                if store is not None:
                    store.close()
        store = Store.open(settings.run.db)
    except StructuredError as error:
        raise _fail(error.message) from None
    with store:
        report, code = run_job(console, job, store)
        if report is not None:
            summary(console, job, store, report, {})
    raise typer.Exit(code)


def _read_only_store(url: str) -> Store | None:
    """The database as it is, for a dry run: None when it does not exist yet (nothing is
    created)."""
    engine = make_engine(url)
    path = sqlite_path(engine)
    if path is not None and not path.exists():
        engine.dispose()
        return None
    return Store.open(engine, create=False)


@app.command("status")
def status_command(
    db: Annotated[str, typer.Option(help="State database URL.")] = DEFAULT_URL,
) -> None:
    """Runs, counts per state, and failures grouped by error code."""
    console = Console(markup=False, highlight=False)
    try:
        with _read_only_store(db) or _fail_empty(db) as store:
            latest = store.latest_source()
            if latest is None:
                raise _fail(f"{db}: no runs yet", code=1)
            runs = store.runs(10)
            table = Table(title="runs (newest first)")
            for column in ("run", "status", "list", "calls", "time", "provider", "host/pid"):
                table.add_column(column)
            for run in runs:
                table.add_row(
                    str(run.run_id), run.status, run.source_path, str(run.calls),
                    format_seconds(run.clock_seconds) if run.clock_seconds is not None else "",
                    f"{run.provider} {run.model}", f"{run.host}/{run.pid}",
                )  # fmt: skip
            console.print(table)
            source_id, path = latest
            counts = store.counts(source_id)
            console.print(
                f"{path}: " + ", ".join(f"{state} {n}" for state, n in counts.items()),
            )
            failures = store.failures_by_code(source_id)
            for code, n in failures.items():
                console.print(f"  failed with {code}: {n}")
    except StructuredError as error:
        raise _fail(error.message) from None


def _fail_empty(db: str) -> Store:
    raise _fail(f"{db}: no database there yet (run `flashkit process` first)", code=1)


@app.command("export")
def export_command(
    db: Annotated[str, typer.Option(help="State database URL.")] = DEFAULT_URL,
    output: Annotated[Path, typer.Option("-o", "--output", help="Output folder.")] = Path("output"),
    formats: Annotated[
        list[str] | None,
        typer.Option("--format", help="tsv | json | apkg (repeat for several; default all)."),
    ] = None,
) -> None:
    """Write the exports of the latest list from the database (no call is made)."""
    chosen = tuple(formats or FORMATS)
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise _fail(f"--format {unknown[0]!r}: use one of {', '.join(FORMATS)}")
    try:
        outputs = plan_outputs(output, db=db)
        with _read_only_store(db) or _fail_empty(db) as store:
            latest = store.latest_source()
            if latest is None:
                raise _fail(f"{db}: no list processed yet", code=1)
            written = Exporter(store, latest[0], outputs, formats=chosen).final()
    except StructuredError as error:
        raise _fail(error.message) from None
    for name, count in written.items():
        typer.echo(
            f"{outputs.paths((name,))[name]}: {count} {'words' if name == 'json' else 'cards'}"
        )


@config_app.command("show")
def config_show(
    config: Annotated[Path | None, typer.Option(help="Settings file.")] = None,
    toml: Annotated[bool, typer.Option("--toml", help="Print as flashkit.toml.")] = False,
) -> None:
    """The effective settings and where each value came from."""
    try:
        settings = load_settings(config_file=config)
    except StructuredError as error:
        raise _fail(error.message) from None
    console = Console(markup=False, highlight=False)
    if toml:
        typer.echo(settings.to_toml(), nl=False)
        return
    table = Table(title=f"flashkit settings (policy {settings.policy})")
    for column in ("setting", "value", "from"):
        table.add_column(column)
    for key, value, source in settings.items():
        table.add_row(key, "" if value is None else str(value), source)
    console.print(table)


@sim_app.command("serve")
def sim_serve(
    port: Annotated[int, typer.Option(min=1, max=65_535, help="TCP port.")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    profile: Annotated[str, typer.Option(help="Fault profile preset.")] = "flaky",
    seed: Annotated[int, typer.Option(help="Seed for reproducible faults.")] = 0,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Change a profile field: --set rpm=1200 (repeatable)."),
    ] = None,
) -> None:
    """Serve the simulated upstream over HTTP (OpenAI chat completions, Anthropic Messages)."""
    # Imported here, like every flashkit.sim import of the CLI: the test bench loads only for
    # `sim serve` and --provider sim, so the other commands and --help start without it.
    from flashkit import sim

    try:
        chosen = sim.FaultProfile.preset(profile, **_profile_changes(set_ or []))
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise _fail(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    except (StructuredError, TypeError) as error:
        raise _fail(str(getattr(error, "message", error))) from None
    sim.serve(chosen, host=host, port=port, seed=seed)


def _profile_changes(pairs: list[str]) -> dict[str, Any]:
    import dataclasses
    import json

    from flashkit.sim import FaultProfile  # only for `sim serve --set` (see sim_serve)

    fields = {f.name for f in dataclasses.fields(FaultProfile)}
    changes: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        name = name.strip()
        if not sep or name not in fields:
            raise ValidationError(
                f"--set {pair!r}: use FIELD=VALUE with a FaultProfile field "
                f"({', '.join(sorted(fields))})",
                code="invalid_config",
            )
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        changes[name] = tuple(map(tuple, value)) if isinstance(value, list) else value
    return changes


def main() -> None:
    """Entry point of the ``flashkit`` script."""
    app(prog_name="flashkit")
