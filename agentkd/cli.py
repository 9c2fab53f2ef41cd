"""The `agentkd` command line (typer + rich).

Each command group lives beside what it drives; this module only wires them together and
owns the commands about the log and the demo store.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from agentkd.errors import AgentKDError

app = typer.Typer(help="agentkd: cheaper LLM agents through in-context distillation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
demos_app = typer.Typer(help="Build and inspect demo stores.", no_args_is_help=True)
app.add_typer(demos_app, name="demos")
console = Console()


def fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command()
def report(
    log: str = typer.Option("sqlite:///agentkd.db", help="SQLAlchemy URL of the log."),
    run: list[str] = typer.Option(None, help="Only these run ids (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    html: Path = typer.Option(None, "--html", help="Also write a self-contained HTML report "
                              "(tables and charts, no network needed to view) to this file."),
) -> None:
    """Per run: episodes, success, steps, teacher-call rate, cost, relative cost, break-even."""
    from agentkd.log import TrajectoryLog
    from agentkd.report import run_summaries, summary_table

    try:
        summaries = run_summaries(TrajectoryLog(log), run_ids=run or None)
        if html is not None:
            from agentkd.dashboard import write_report

            write_report(log, str(html), run or None)
            console.print(f"wrote {html}", highlight=False)
    except AgentKDError as exc:
        fail(str(exc))
        return
    except ImportError as exc:  # the dashboard extra (jinja2, plotly) is not installed
        fail(f"--html needs {exc.name}: pip install 'agentkd[dashboard]'")
        return
    if as_json:
        typer.echo(json.dumps([s.model_dump() for s in summaries], indent=2))
    else:
        console.print(summary_table(summaries))


@app.command()
def dashboard(
    log: str = typer.Option("sqlite:///agentkd.db", help="SQLAlchemy URL of the log."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs "
                             "a token."),
    port: int = typer.Option(8765, help="TCP port."),
    token: str = typer.Option(None, envvar="AGENTKD_DASHBOARD_TOKEN",
                              help="Access token; generated when binding beyond loopback."),
    cache: Path = typer.Option(None, help="File keeping the log's aggregates between starts "
                               "(default: one per log under ~/.cache/agentkd/dashboard)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Aggregate the whole log afresh "
                                  "and keep nothing on disk."),
) -> None:
    """Serve the cost dashboard for a log: runs, costs over time, cascade, episodes, models."""
    import secrets

    try:
        from agentkd.dashboard import app as dashboard_app
    except ImportError as exc:  # the dashboard extra is not installed
        fail(f"the dashboard needs {exc.name}: pip install 'agentkd[dashboard]'")
        return
    if token is None and not dashboard_app.is_loopback(host):
        token = secrets.token_urlsafe(24)
        console.print(f"binding to {host}: generated an access token", highlight=False)
    try:
        from agentkd.dashboard.queries import default_cache

        cache_file = None if no_cache else (cache or default_cache(log))
        console.print("reading the log …", highlight=False)
        dashboard_app.serve(
            log, host=host, port=port, token=token, cache=cache_file,
            on_progress=lambda table, done, top: console.print(
                f"  {table}: {done:,} of {top:,} rows aggregated", highlight=False),
            on_ready=lambda url: console.print(f"agentkd dashboard at {url}  (Ctrl-C to stop)",
                                               highlight=False, soft_wrap=True))
    except AgentKDError as exc:
        fail(str(exc))


@app.command("export")
def export(
    log: str = typer.Option(..., help="SQLAlchemy URL of the log."),
    run: list[str] = typer.Option(..., help="Run id to export (repeatable)."),
    out: Path = typer.Option(..., help="Dataset file (JSONL); the validation split goes to "
                             "<stem>.val<suffix>, the dataset card to <stem>.card.json."),
    fmt: str = typer.Option("openai-jsonl", "--format",
                            help="openai-jsonl, hf-chat or sharegpt."),
    include_failed: bool = typer.Option(False, help="Keep failed episodes too."),
    source: str = typer.Option("both", help="teacher, student (steps the cascade gate "
                               "accepted) or both."),
    task_type: list[str] = typer.Option(None, help="Only these task types (repeatable)."),
    dedupe: bool = typer.Option(True, help="Drop records identical to one already exported."),
    granularity: str = typer.Option("episode", help="episode (each step trained once, in "
                                    "the context the agent showed) or step (one record per "
                                    "step)."),
    val_fraction: float = typer.Option(0.1, help="Share of episodes held out for validation."),
    seed: int = typer.Option(0, help="Seed of the train/validation split."),
) -> None:
    """Export logged episodes as a chat fine-tuning dataset with a dataset card."""
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from agentkd.export import ExportFilters, export_dataset

    try:
        filters = ExportFilters(success_only=not include_failed, source=source,  # type: ignore[arg-type]
                                task_types=task_type or None, dedupe=dedupe,
                                granularity=granularity,  # type: ignore[arg-type]
                                val_fraction=val_fraction, seed=seed)
    except ValidationError as exc:
        fail(f"bad export option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
        return
    try:
        with Progress(TextColumn("export"), BarColumn(), MofNCompleteColumn(),
                      console=console) as progress:
            task = progress.add_task("export", total=None)
            card = export_dataset(log, run, out, fmt=fmt, filters=filters,  # type: ignore[arg-type]
                                  on_episode=lambda: progress.advance(task))
    except AgentKDError as exc:
        fail(str(exc))
        return
    for name, split in card.splits.items():
        console.print(f"{name}: {split.records} records, {split.trained_turns} trained turns "
                      f"from {split.episodes} episodes → {out.parent / split.path}",
                      highlight=False)
    console.print(f"tokens: {card.tokens.total:,} ({card.tokens.tokenizer}), "
                  f"{card.duplicates_dropped} duplicates dropped; card: "
                  f"{out.parent / (out.stem + '.card.json')}", highlight=False)


@demos_app.command("build")
def demos_build(
    log: str = typer.Option(..., help="SQLAlchemy URL of the log holding the teacher run."),
    run: str = typer.Option(..., help="Run id whose successful episodes become demos."),
    out: Path = typer.Option(..., help="Demo store folder (created or extended)."),
    embedding_model: str = typer.Option(None, help="sentence-transformers model name or path."),
    include_failed: bool = typer.Option(False, help="Keep failed episodes too (analysis only)."),
) -> None:
    """Build or extend a demo store from a logged teacher run."""
    from agentkd.log import TrajectoryLog
    from agentkd.retrieval import DemoStore, demos_from_log

    try:
        with DemoStore.open(out, embedding_model=embedding_model, create=True) as store:
            added = demos_from_log(TrajectoryLog(log), run, store, include_failed=include_failed)
            console.print(f"added {added} episodes; store now holds {len(store)} steps at {out}")
    except AgentKDError as exc:
        fail(str(exc))


@demos_app.command("stats")
def demos_stats(store: Path = typer.Argument(..., help="Demo store folder.")) -> None:
    """Summarise a demo store: episodes, steps, task types, embedding model, size."""
    from agentkd.retrieval import DemoStore

    try:
        with DemoStore.open(store) as opened:
            typer.echo(json.dumps(opened.stats(), indent=2))
    except AgentKDError as exc:
        fail(str(exc))


from agentkd.envs.cli import bench_app, demo  # noqa: E402  (the envs sub-app imports this base)

app.add_typer(bench_app, name="bench")
app.command("demo")(demo)

from agentkd.cascades.cli import calibrate  # noqa: E402

app.command("calibrate")(calibrate)

from agentkd.memory.cli import memory_app  # noqa: E402

app.add_typer(memory_app, name="memory")


if __name__ == "__main__":
    app()
