"""The `agentkd` command line (typer + rich).

Each command group lives beside what it drives; this module only wires them together and
owns the commands about the log and the demo store.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from agentkd import __version__
from agentkd.errors import AgentKDError

app = typer.Typer(help="agentkd: cheaper LLM agents through in-context distillation.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
demos_app = typer.Typer(help="Build and inspect demo stores.", no_args_is_help=True)
app.add_typer(demos_app, name="demos")
console = Console()


def fail(message: str) -> None:
    # Escaped: messages name extras and TOML tables ('agentkd[dashboard]', [[key]]),
    # which rich would otherwise read as markup and drop.
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(2)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"agentkd {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print agentkd's version and exit."),
) -> None:
    """agentkd: cheaper LLM agents through in-context distillation."""


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
        summaries = run_summaries(TrajectoryLog(log, create=False), run_ids=run or None)
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
        console.print(summary_table(summaries, width=console.width))


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


@app.command()
def serve(
    teacher: str = typer.Option(None, help="Teacher model string clients ask for (e.g. "
                                "anthropic/claude-sonnet-4-5); its requests go through the "
                                "cascade."),
    student: str = typer.Option(None, help="Student model string (needed in student, icd "
                                "and distill modes)."),
    mode: str = typer.Option("distill", help="teacher, collect, student, icd or distill."),
    demos: Path = typer.Option(None, help="Demo store folder."),
    log: str = typer.Option(None, help="SQLAlchemy URL of the log (default "
                            "sqlite:///agentkd.db; PostgreSQL for several workers)."),
    host: str = typer.Option(None, help="Address to bind (default 127.0.0.1); anything but "
                             "loopback needs gateway keys (--config)."),
    port: int = typer.Option(None, help="TCP port (default 4000)."),
    config: Path = typer.Option(None, "--config", help="Gateway TOML file: several routes "
                                "(teachers and students), upstreams, gateway keys."),
    workers: int = typer.Option(1, help="Worker processes (they share the log)."),
    idle_timeout: float = typer.Option(None, help="Close an episode after this many seconds "
                                       "without a request (default 600)."),
) -> None:
    """Serve the cascade as an OpenAI- and Anthropic-compatible gateway (base URL /v1)."""
    try:
        from agentkd.gateway.config import build_config, load_config
        from agentkd.gateway.server import serve as run_gateway
    except ImportError as exc:  # the gateway extra is not installed
        fail(f"the gateway needs {exc.name}: pip install 'agentkd[gateway]'")
        return
    flags = {"log": log, "host": host, "port": port, "idle_timeout_s": idle_timeout}
    try:
        settings = (load_config(config, **flags) if config is not None else
                    build_config({k: v for k, v in flags.items() if v is not None}))
        if teacher is not None:
            route = {"teacher": teacher, "student": student, "mode": mode,
                     "demos": str(demos) if demos else None}
            settings = build_config({**settings.model_dump(),
                                     "route": [route, *settings.model_dump()["route"]]})
        elif config is None:
            fail("name a teacher (--teacher MODEL) or a config file (--config gateway.toml)")
            return
        names = ", ".join(n for r in settings.route for n in r.names) or "none"
        run_gateway(settings, workers=workers, on_ready=lambda: console.print(
            f"agentkd gateway on http://{settings.host}:{settings.port}/v1 (teachers: "
            f"{names}; log: {settings.log.split('://')[0]}; Ctrl-C to stop)",
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
    answers: str = typer.Option("logged", help="logged (each step's own answer) or teacher "
                                "(the teacher's: its own steps and its shadow labels of the "
                                "student's steps, the DAgger data; needs --granularity step "
                                "and a run with --shadow)."),
    val_fraction: float = typer.Option(0.1, help="Share of episodes held out for validation."),
    seed: int = typer.Option(0, help="Seed of the train/validation split."),
) -> None:
    """Export logged episodes as a chat fine-tuning dataset with a dataset card."""
    from pydantic import ValidationError
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from agentkd.export import ExportFilters, export_dataset
    from agentkd.log import TrajectoryLog

    try:
        filters = ExportFilters(success_only=not include_failed, source=source,  # type: ignore[arg-type]
                                task_types=task_type or None, dedupe=dedupe,
                                granularity=granularity,  # type: ignore[arg-type]
                                answers=answers,  # type: ignore[arg-type]
                                val_fraction=val_fraction, seed=seed)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(map(str, error["loc"])) or "options"
        fail(f"bad export option: {where}: {error['msg']}")
        return
    try:
        trajectories = TrajectoryLog(log, create=False)
        with Progress(TextColumn("export"), BarColumn(), MofNCompleteColumn(),
                      console=Console(stderr=True)) as progress:
            task = progress.add_task("export", total=None)
            card = export_dataset(trajectories, run, out, fmt=fmt, filters=filters,  # type: ignore[arg-type]
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


@app.command("train")
def train(
    data: Path = typer.Option(..., help="Dataset file written by `agentkd export`."),
    base: str = typer.Option(..., help="Base model: a Hugging Face folder or id, a .gguf "
                             "file, or local/smollm2-135m."),
    out: Path = typer.Option(..., help="Output folder (adapter/, merged/, checkpoints/, "
                             "train_report.json); rerun the same command to resume."),
    eval_data: Path = typer.Option(None, help="Held-out dataset (default: the validation "
                                   "split named by the dataset card)."),
    r: int = typer.Option(64, help="LoRA rank."),
    alpha: int = typer.Option(128, help="LoRA alpha."),
    lr: float = typer.Option(2e-4, help="Learning rate."),
    epochs: float = typer.Option(2.0, help="Epochs."),
    grad_accum: int = typer.Option(4, help="Gradient accumulation steps (batch size 1)."),
    max_length: int = typer.Option(1024, help="Token cap per record; longer ones lose their "
                                   "oldest exchanges."),
    max_records: int = typer.Option(None, help="Train on a seeded sample of N records."),
    save_steps: int = typer.Option(20, help="Checkpoint every N optimiser steps."),
    eval_limit: int = typer.Option(None, help="At most N held-out actions in the next-action "
                                   "evaluation."),
    eval_base: bool = typer.Option(False, help="Also evaluate the base model first."),
    threads: int = typer.Option(None, help="CPU threads for torch."),
    merge: bool = typer.Option(True, help="Also write the merged model (merged/)."),
    gguf: bool = typer.Option(None, help="Write merged/model.gguf for the local llama.cpp "
                              "backend (default: when the base is a GGUF file)."),
) -> None:
    """LoRA fine-tuning of a small student on an exported dataset (TRL SFTTrainer)."""
    from pydantic import ValidationError

    from agentkd.train import TrainConfig
    from agentkd.train import train as run_training

    try:
        config = TrainConfig(data=data, base=base, out=out, eval_data=eval_data, r=r,
                             alpha=alpha, lr=lr, epochs=epochs, grad_accum=grad_accum,
                             max_length=max_length, max_records=max_records,
                             save_steps=save_steps, eval_limit=eval_limit, threads=threads,
                             merge=merge, gguf=gguf)
    except ValidationError as exc:
        fail(f"bad training option: {exc.errors()[0]['loc'][0]}: {exc.errors()[0]['msg']}")
        return
    try:
        report = run_training(config, log=lambda m: console.print(m, highlight=False),
                              evaluate_base=eval_base)
    except AgentKDError as exc:
        fail(str(exc))
        return
    lines = [f"trained {report.steps} steps on {report.train_records} records in "
             f"{report.train_seconds:.0f} s; validation loss {report.eval_loss_before} → "
             f"{report.eval_loss_after}"]
    for name, result in (("base", report.base_eval), ("fine-tuned", report.tuned_eval)):
        if result is not None:
            lines.append(f"{name} next-action match: {result.matched}/{result.targets} "
                         f"({result.accuracy:.0%}), {result.seconds_per_action:.1f} s/action")
    lines.append(f"adapter: {report.adapter}" + (f"; merged: {report.merged}"
                                                 if report.merged else ""))
    if report.gguf:
        lines.append(f"serve it: Distiller(student='local/{report.gguf}')")
    console.print("\n".join(lines), highlight=False)


@app.command("evaluate")
def evaluate(
    data: Path = typer.Option(..., help="Dataset file (e.g. an `agentkd export` of held-out "
                              "teacher steps)."),
    model: str = typer.Option(..., help="litellm model string: local/..., "
                              "local/<path>.gguf, an API model, ..."),
    limit: int = typer.Option(None, help="At most N actions."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Next-action exact match of a model against the teacher's actions in a dataset."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from agentkd.train import count_targets, evaluate_model

    try:
        total = count_targets(data, limit)
        # On stderr: with --json, stdout is the JSON alone.
        with Progress(TextColumn(f"evaluate {model}"), BarColumn(), MofNCompleteColumn(),
                      console=Console(stderr=True)) as progress:
            task = progress.add_task("evaluate", total=total)
            result = evaluate_model(data, model, limit=limit,
                                    on_target=lambda: progress.advance(task))
    except AgentKDError as exc:
        fail(str(exc))
        return
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
    else:
        console.print(f"{model}: {result.matched}/{result.targets} next actions match "
                      f"({result.accuracy:.0%}), {result.no_action} without an action, "
                      f"{result.seconds_per_action:.2f} s/action", highlight=False)


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
        trajectories = TrajectoryLog(log, create=False)  # before the store: a typo creates nothing
        with DemoStore.open(out, embedding_model=embedding_model, create=True) as store:
            added = demos_from_log(trajectories, run, store, include_failed=include_failed)
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

from agentkd.loop.cli import loop_app  # noqa: E402

app.add_typer(loop_app, name="loop")


if __name__ == "__main__":
    app()
