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
) -> None:
    """Per run: episodes, success, steps, teacher-call rate, cost, relative cost, break-even."""
    from agentkd.log import TrajectoryLog
    from agentkd.report import run_summaries, summary_table

    try:
        summaries = run_summaries(TrajectoryLog(log), run_ids=run or None)
    except AgentKDError as exc:
        fail(str(exc))
        return
    if as_json:
        typer.echo(json.dumps([s.model_dump() for s in summaries], indent=2))
    else:
        console.print(summary_table(summaries))


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


if __name__ == "__main__":
    app()
