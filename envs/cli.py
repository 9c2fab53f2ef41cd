"""`agentkd bench alfworld` and `agentkd demo`: the product's main job from the command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agentkd.config import MODES, Cascade, load_cascade, validated
from agentkd.envs.bench import BenchConfig, EpisodeOutcome, plan_games, run_bench, validate
from agentkd.errors import AgentKDError, InputError

if TYPE_CHECKING:
    from agentkd.report import RunSummary

bench_app = typer.Typer(help="Run benchmarks on real environments.", no_args_is_help=True)
console = Console()

DEFAULT_STUDENT = "local/qwen2.5-coder-1.5b"
DEMO_TEACHER = "alfworld/rescue"
"""The demo's teacher: it acts from any state a student leaves, so a deferral can rescue."""
DEMO_STUDENT = "local/qwen2.5-coder-0.5b"
"""The demo's student: three times as fast as the 1.5B on a CPU, so the demo fits minutes."""


def run_with_progress(config: BenchConfig, title: str, resume_hint: str | None = None) -> str:
    """Play `config` under a progress bar (won, cost, teacher-call rate); returns the run id.
    A configuration error is raised before the bar is drawn; Ctrl-C stops the games and says
    how to resume (`resume_hint`, default: the bench command's --resume --run)."""
    run_id = config.run_id()
    config.run = run_id
    games, skipped = plan_games(config, run_id)
    validate(config, run_id)
    if skipped:
        console.print(f"[dim]{title}: resuming run {run_id}, {skipped} games already done[/dim]")
    totals = {"done": 0, "won": 0, "cost": 0.0, "steps": 0, "teacher": 0}
    # Narrow bar: the stats and the elapsed time must fit an 80-column terminal.
    columns = [TextColumn("{task.description}"), BarColumn(bar_width=12), MofNCompleteColumn(),
               TextColumn("{task.fields[stats]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(title, total=len(games), stats="")

        def update(outcome: EpisodeOutcome) -> None:
            totals["done"] += 1
            totals["won"] += int(outcome.success)
            totals["cost"] += outcome.cost_usd
            totals["steps"] += outcome.steps
            totals["teacher"] += outcome.teacher_steps
            rate = totals["teacher"] / totals["steps"] if totals["steps"] else 0.0
            progress.update(task, advance=1, stats=(
                f"won {totals['won']}/{totals['done']}  ${totals['cost']:.4f}  "
                f"teacher calls {rate:.0%}"))

        try:
            run_bench(config, on_episode=update)
        except KeyboardInterrupt:
            hint = resume_hint or f"continue with --resume --run {run_id}"
            console.print(f"[yellow]interrupted[/yellow]; {hint}")
            raise typer.Exit(130) from None
    return run_id


def parse_price(spec: str) -> tuple[str, tuple[float, float]]:
    """`openai/qwen=0.05,0.10` → ("openai/qwen", (0.05, 0.10)), or an InputError saying why."""
    model, _, numbers = spec.rpartition("=")
    try:
        input_per_mtok, output_per_mtok = (float(x) for x in numbers.split(","))
    except ValueError:
        input_per_mtok = output_per_mtok = -1.0
    if not model or min(input_per_mtok, output_per_mtok) < 0:
        raise InputError(f"--price {spec!r}: expected MODEL=IN,OUT with USD per million input "
                         f"and output tokens >= 0, e.g. --price openai/qwen=0.05,0.10")
    return model, (input_per_mtok, output_per_mtok)


def _print_report(log: str, run_ids: list[str], as_json: bool = False) -> list[RunSummary]:
    from agentkd.log import TrajectoryLog
    from agentkd.report import run_summaries, summary_table

    summaries = run_summaries(TrajectoryLog(log), run_ids=run_ids)
    if as_json:
        typer.echo(json.dumps([s.model_dump() for s in summaries], indent=2))
    else:
        console.print(summary_table(summaries, width=console.width))
    return summaries


@bench_app.command("alfworld")
def bench_alfworld(
    mode: str = typer.Option("distill", help=f"One of: {', '.join(MODES)}."),
    split: str = typer.Option("valid_seen", help="train, valid_seen, valid_unseen, valid_train."),
    teacher: str = typer.Option("alfworld/expert", help=(
        "litellm model string of the teacher: alfworld/expert (handcoded), alfworld/rescue "
        "(acts from any state), alfworld/planner (full-state oracle), or an LLM.")),
    student: str = typer.Option(DEFAULT_STUDENT, help="litellm model string of the student."),
    episodes: int = typer.Option(None, help="Play only N games of the split (the first N, or "
                                            "N spread over task types with --stratify)."),
    offset: int = typer.Option(0, help="Skip the first games of the split (with --stratify: "
                               "of the stratified order)."),
    stratify: bool = typer.Option(False, help="Pick the N games round-robin over the six "
                                              "task types instead of the first N."),
    workers: int = typer.Option(None, help="Worker processes (each loads its own models); "
                                           "with --ray, actors (default 1, with --ray as "
                                           "many as the cluster holds)."),
    ray: str = typer.Option(None, "--ray", help="Play on a Ray cluster: auto (the one this "
                            "host joined with `ray start`), local (a new one on this host) or "
                            "HOST:PORT of its head. Needs pip install 'agentkd\\[ray]'."),
    ray_cpus: float = typer.Option(1.0, help="CPUs each Ray actor declares (a local "
                                             "student's threads)."),
    ray_memory_mb: int = typer.Option(None, help="Memory each Ray actor declares (default: "
                                                 "1 GB, plus a local student's model)."),
    ray_gpus: float = typer.Option(0.0, help="GPUs each Ray actor declares (a student "
                                             "served in the actor)."),
    demos: str = typer.Option(None, help="Demo store folder (icd/distill read it; collect "
                                         "writes it)."),
    log: str = typer.Option("sqlite:///agentkd.db", help="SQLAlchemy URL of the log."),
    run: str = typer.Option(None, help="Run id (default: generated)."),
    resume: bool = typer.Option(False, help="Skip games this run already finished."),
    max_steps: int = typer.Option(50, help="Step cap per episode."),
    samples: int = typer.Option(3, help="Student samples per step (distill)."),
    cascade: Path = typer.Option(None, help="Cascade config written by `agentkd calibrate` "
                                            "(replaces --samples)."),
    shadow: float = typer.Option(None, help="Share of steps on which the teacher is also "
                                            "asked and its action logged as a label for "
                                            "`agentkd calibrate` (1.0: every step)."),
    defer_loops: bool = typer.Option(False, help="Also defer when the student repeats an "
                                                 "action on an observation it already acted "
                                                 "on in this episode (distill)."),
    defer_repeats: int = typer.Option(None, help="Also defer when the student's action was "
                                                 "already taken this many times in the "
                                                 "episode (distill; e.g. 2)."),
    grow_demos: bool = typer.Option(False, help="Add the teacher's steps of each won episode "
                                                "to --demos as the run goes (distill; the "
                                                "store is created if missing)."),
    k: int = typer.Option(6, help="Demo windows per step."),
    price: list[str] = typer.Option([], help="MODEL=IN,OUT: USD per million input / output "
                                             "tokens for a model litellm does not price "
                                             "(repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Play ALFWorld games with the reference ReAct agent under one mode, logged and resumable."""
    try:
        prices = dict(map(parse_price, price))
        cascade_config = (load_cascade(cascade).model_dump() if cascade is not None
                          else {"samples": samples})
        if shadow is not None:
            cascade_config["shadow"] = shadow
        if defer_loops:
            cascade_config["defer_loops"] = True
        if defer_repeats is not None:
            cascade_config["defer_repeats"] = defer_repeats
        validated(Cascade, cascade_config, "cascade")
    except AgentKDError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    config = BenchConfig(mode=mode, teacher=teacher, student=student, split=split,
                         episodes=episodes, offset=offset, stratify=stratify,
                         workers=workers if workers is not None else 0 if ray else 1,
                         ray=ray, ray_cpus=ray_cpus, ray_memory_mb=ray_memory_mb,
                         ray_gpus=ray_gpus, demos=demos, grow_demos=grow_demos,
                         log=log, run=run, resume=resume, max_steps=max_steps,
                         cascade=cascade_config, retrieval={"k": k}, prices=prices)
    try:
        run_id = run_with_progress(config, f"{mode} on {split}")
        _print_report(log, [run_id], as_json)
    except AgentKDError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


TEACHER_CAP = 50
"""Step cap of the demo's teacher phases when no --max-steps is given (the bench default)."""
STUDENT_CAP_FACTOR = 2
"""The demo's student phases get this many times the teacher's longest episode."""


def longest_episode(log: str, run_id: str) -> int:
    """The most steps any episode of `run_id` took."""
    from agentkd.log import TrajectoryLog

    return max((e.n_steps for e in TrajectoryLog(log).episodes(run_id)), default=TEACHER_CAP)


def demo(
    workdir: Path = typer.Option(Path(".agentkd"), help="Where the log and demo store go."),
    train_games: int = typer.Option(12, help="Train games the teacher plays to collect demos."),
    games: int = typer.Option(2, help="valid_seen games each mode is evaluated on."),
    max_steps: int = typer.Option(None, help="Step cap per evaluation episode (default: the "
                                             "teacher plays up to 50 steps, the students up to "
                                             "twice its longest episode)."),
    student: str = typer.Option(DEMO_STUDENT, help="Student model (litellm string)."),
    teacher: str = typer.Option(DEMO_TEACHER, help="Teacher (litellm string): "
                                "alfworld/rescue, alfworld/expert, alfworld/planner or an LLM."),
    ray: str = typer.Option(None, "--ray", help="Play every phase on a one-node Ray cluster: "
                            "auto, local or HOST:PORT (the demo's log is SQLite)."),
    student_from: Path = typer.Option(None, help="Use the student an earlier `agentkd loop "
                                      "alfworld --workdir PATH` fine-tuned (priced as its "
                                      "base) instead of --student."),
) -> None:
    """The offline story: collect demos with the teacher, then compare every mode."""
    log = f"sqlite:///{(workdir / 'demo.db').resolve()}"
    demos = str(workdir / "demos")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    prices: dict[str, tuple[float, float]] = {}

    def play(mode: str, split: str, n: int, steps: int) -> str:
        config = BenchConfig(mode=mode, teacher=teacher, student=student, split=split,
                             episodes=n, stratify=True,
                             demos=demos if mode in ("collect", "icd", "distill") else None,
                             log=log, run=f"demo-{stamp}-{mode}", max_steps=steps,
                             ray=ray, workers=0 if ray else 1, prices=prices,
                             # A small student agrees with itself while going round in
                             # circles: the cascade defers those steps too.
                             cascade={"defer_loops": mode == "distill"},
                             retrieval={"k": 3, "window_before": 1, "window_after": 1})
        return run_with_progress(config, f"{mode:8s} {split}")

    try:
        if student_from is not None:
            from agentkd.loop.alfworld import trained_student

            tuned = trained_student(student_from)
            student, prices = tuned.model, {tuned.model: tuned.price}
            match = (f", {tuned.next_action_match:.0%} next-action match on held-out steps"
                     if tuned.next_action_match is not None else "")
            console.print(f"[dim]student: {tuned.base} fine-tuned by `agentkd loop` in "
                          f"{student_from}{match}[/dim]", highlight=False)
        runs = [play("collect", "train", train_games, TEACHER_CAP),
                play("teacher", "valid_seen", games,
                     TEACHER_CAP if max_steps is None else max_steps)]
        if max_steps is None:
            # Every teacher episode ended within its longest one, so under this cap the
            # teacher's log (wins and cost) is exactly what it is: the cap never decides
            # against the teacher. Twice that: a student's episodes run longer than the
            # teacher's (14-18 steps where it took 12, measured in the README's cascade run).
            longest = longest_episode(log, runs[-1])
            max_steps = STUDENT_CAP_FACTOR * longest
            console.print(f"[dim]students' step cap: {max_steps}, twice the teacher's "
                          f"longest episode on these games ({longest})[/dim]")
        runs += [play(mode, "valid_seen", games, max_steps)
                 for mode in ("student", "icd", "distill")]
    except AgentKDError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    summaries = _print_report(log, runs)
    console.print(conclusion(next(s for s in summaries if s.run_id == runs[-1])))
    console.print(f"log: {log}\ndemos: {demos}\nagain: agentkd report --log {log}")


def conclusion(run: RunSummary) -> str:
    """One line on what the run shows against the teacher alone, by the report's own rule:
    a saving only where its success is within the teacher's interval."""
    won = f"{run.mode} won {run.wins}/{run.episodes}"
    if run.baseline_episodes == 0:
        return f"{won}; no teacher-only run on the same games to compare with"
    teacher = f"the teacher alone {run.baseline_wins}/{run.baseline_episodes}"
    if run.relative_cost is None or run.saving_withheld:
        return f"{won}, {teacher}: {run.saving_withheld or 'no saving'}, no saving claimed"
    return (f"{won}, {teacher}, at {run.relative_cost:.2f}x the teacher's cost with "
            f"{run.teacher_call_rate:.0%} teacher calls")
