"""The closed loop on ALFWorld as one resumable pipeline (`agentkd loop alfworld`).

collect (the teacher plays train games → demo store) → export (the SFT dataset from the log)
→ train (LoRA SFT of a small GGUF student, merged and written as GGUF for llama.cpp) →
dagger (optional, ``dagger_games``: the tuned student plays further train games with the
teacher labelling every step; the states it reached, answered with the teacher's actions,
join the SFT data and the student trains on; DAgger, Ross et al. 2011) → calibrate (a
shadow run of the tuned student on valid_train → the acceptance rule) → distill (the tuned
student with demos and the cascade on valid_seen, and the teacher-only baseline
with the same teacher, games and step cap) → report (the run summaries, and ``report.json``
with the break-even over collection and training cost).

Each phase only calls the code that does its job elsewhere (`run_with_progress`,
`export_dataset`, `train`, `calibrate_log`, `run_summaries`); the phase machinery
(`agentkd.loop.phases`) skips finished phases and redoes a phase whose settings changed and
everything after it. Run ids and output folders carry the phase's fingerprint, so a rerun
of an interrupted phase resumes its games (``resume=True``) or its training checkpoint.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import litellm
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console

from agentkd.errors import ConfigError
from agentkd.loop.phases import Phase, fingerprints, run_phases

REPORT_FILE = "report.json"
DEFAULT_USD_PER_CPU_HOUR = 0.05
"""Price of one CPU-hour of training: about an on-demand cloud vCPU-hour (2026 list prices of
general-purpose instances, e.g. $0.10/h for 2 vCPUs)."""


class LoopConfig(BaseModel):
    """One `agentkd loop alfworld`: defaults sized for a 2-core CPU (minutes, not hours)."""

    model_config = ConfigDict(extra="forbid")

    workdir: Path = Path("runs/loop")
    teacher: str = Field("alfworld/rescue", description="teacher of collect and baseline")
    base: str = Field("local/smollm2-135m", description="GGUF base of the student")
    train_games: int = Field(8, ge=1, description="train games the teacher collects")
    collect_max_steps: int = Field(50, ge=1, description="step cap while collecting")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="episodes held out of SFT")
    epochs: float = Field(1.0, gt=0.0)
    max_length: int = Field(512, ge=64, description="token cap per training record")
    max_records: int | None = Field(None, ge=1, description="train on at most N records")
    grad_accum: int = Field(4, ge=1)
    lr: float = Field(2e-4, gt=0.0)
    r: int = Field(64, ge=1, description="LoRA rank")
    alpha: int = Field(128, ge=1, description="LoRA alpha")
    save_steps: int = Field(5, ge=1, description="checkpoint every N optimiser steps")
    eval_limit: int = Field(20, ge=1, description="held-out actions scored after training")
    threads: int | None = Field(None, ge=1, description="torch threads while training")
    dagger_games: int = Field(0, ge=0, description="train games (after the collected ones) "
                              "the tuned student plays with every step labelled by the "
                              "teacher, to train on (0: no DAgger round)")
    dagger_max_steps: int = Field(20, ge=1, description="step cap of the DAgger games")
    dagger_epochs: float = Field(1.0, gt=0.0, description="epochs over the DAgger data")
    dagger_max_records: int | None = Field(None, ge=1, description="DAgger round: train on a "
                                           "seeded sample of N records")
    calibrate_games: int = Field(2, ge=1, description="valid_train games of the shadow run")
    eval_games: int = Field(4, ge=1, description="valid_seen games of distill and baseline")
    max_steps: int = Field(20, ge=1, description="step cap of calibrate, distill, baseline")
    samples: int = Field(3, ge=1, le=32, description="student samples per step")
    k: int = Field(3, ge=1, description="demo windows per step")
    target_accuracy: float = Field(0.95, gt=0.0, lt=1.0)
    confidence: float = Field(0.95, gt=0.0, lt=1.0)
    bootstrap: int = Field(1000, ge=100)
    train_usd_per_cpu_hour: float = Field(DEFAULT_USD_PER_CPU_HOUR, ge=0.0)
    data: str | None = Field(None, description="ALFWorld data folder (default: found)")
    workers: int = Field(1, ge=1, description="games played at once (each its own process)")

    @property
    def log(self) -> str:
        return f"sqlite:///{(self.workdir / 'loop.db').resolve()}"


@dataclass
class LoopContext:
    """What every phase sees: the config, where to print, and the phases' fingerprints
    (their run ids and folders carry them)."""

    config: LoopConfig
    say: Callable[[str], None]
    tags: dict[str, str] = field(default_factory=dict)


Outputs = Mapping[str, Mapping[str, Any]]


def _settings(*names: str) -> Callable[[LoopContext], dict[str, Any]]:
    return lambda ctx: {name: getattr(ctx.config, name) for name in names}


def _collect_settings(ctx: LoopContext) -> dict[str, Any]:
    """What decides the collected data: the teacher, the games and the agent's prompt layout
    (demos and students of another layout would not match what the agent shows)."""
    from agentkd.envs.react import PROMPT_VERSION

    settings = _settings("teacher", "train_games", "collect_max_steps", "data")(ctx)
    return {**settings, "agent_prompt": PROMPT_VERSION}


def _tag(ctx: LoopContext, phase: str) -> str:
    return ctx.tags[phase][:8]


def _console() -> Console:
    """The bench commands' console (progress bars and tables go to one place)."""
    from agentkd.envs import cli as bench_cli

    return bench_cli.console


def _play(ctx: LoopContext, title: str, **bench: Any) -> str:
    """One resumable bench run under the bench's progress bar; Ctrl-C → KeyboardInterrupt."""
    import typer

    from agentkd.envs.bench import BenchConfig
    from agentkd.envs.cli import run_with_progress

    c = ctx.config
    student = bench.get("student")
    if student is not None:
        # The tuned student costs its base's. Passed on every run, not only while this
        # process lacks the price: worker processes start without the parent's registrations.
        bench["prices"] = {student: base_price(c.base)}
    config = BenchConfig(teacher=c.teacher, stratify=True, log=c.log, resume=True,
                         data=c.data, workers=c.workers,
                         retrieval={"k": c.k, "window_before": 1, "window_after": 1},
                         **bench)
    try:
        return run_with_progress(config, title,
                                 resume_hint="rerun the same loop command to continue")
    except typer.Exit as exc:
        if exc.exit_code == 130:
            raise KeyboardInterrupt from None
        raise


@dataclass(frozen=True)
class TrainedStudent:
    """The student a finished loop trained: its model string, priced as its base."""

    model: str
    base: str
    price: tuple[float, float]
    next_action_match: float | None


def trained_student(workdir: Path) -> TrainedStudent:
    """The tuned student of the loop in `workdir`: the DAgger round's where it finished after
    this training, else the train phase's (which must have finished)."""
    from agentkd.loop.phases import fingerprint, marker_path, read_marker

    marker = read_marker(workdir, "train")
    if marker is None:
        raise ConfigError(f"{workdir} holds no trained student ({marker_path(workdir, 'train')} "
                          f"is missing): run `agentkd loop alfworld --workdir {workdir}` first")
    _check_prompt_layout(workdir)
    latest, dagger = marker, read_marker(workdir, "dagger")
    # A round left from before the training was redone chains to another fingerprint.
    if dagger is not None and dagger.fingerprint == fingerprint(dagger.settings,
                                                                marker.fingerprint):
        latest = dagger
    model = str(latest.outputs["student"])
    if not Path(model.removeprefix("local/")).is_file():
        raise ConfigError(f"the student the loop in {workdir} trained, {model}, is gone; rerun "
                          f"`agentkd loop alfworld --workdir {workdir}` to train it again")
    base = str(marker.settings["base"])
    return TrainedStudent(model, base, base_price(base), latest.outputs.get("next_action_match"))


def _check_prompt_layout(workdir: Path) -> None:
    """Refuse a student that learnt another layout of the reference agent's prompt: it would
    play a prompt it never saw (a loop from before the layout had a version had layout 1)."""
    from agentkd.envs.react import PROMPT_VERSION
    from agentkd.loop.phases import read_marker

    collected = read_marker(workdir, "collect")
    learnt = collected.settings.get("agent_prompt", 1) if collected is not None else None
    if learnt is not None and learnt != PROMPT_VERSION:
        raise ConfigError(f"the student in {workdir} learnt the reference agent's prompt layout "
                          f"{learnt}; this agentkd's agent shows layout {PROMPT_VERSION} (see "
                          f"agentkd.envs.react.PROMPT_VERSION): rerun `agentkd loop alfworld "
                          f"--workdir {workdir}` with its options (collect and every later "
                          f"phase run again)")


def base_price(base: str) -> tuple[float, float]:
    """(input, output) USD per million tokens of `base` (0 where litellm does not price it)."""
    cost = litellm.model_cost.get(base, {})
    return (float(cost.get("input_cost_per_token") or 0.0) * 1e6,
            float(cost.get("output_cost_per_token") or 0.0) * 1e6)


def collect(ctx: LoopContext, _: Outputs) -> dict[str, Any]:
    from agentkd.log import TrajectoryLog

    c, tag = ctx.config, _tag(ctx, "collect")
    demos = c.workdir / f"demos-{tag}"
    run = _play(ctx, "collect train", mode="collect", split="train", episodes=c.train_games,
                demos=str(demos), run=f"loop-collect-{tag}", max_steps=c.collect_max_steps)
    episodes = TrajectoryLog(c.log).episodes(run)
    return {"run": run, "demos": str(demos), "episodes": len(episodes),
            "won": sum(bool(e.success) for e in episodes),
            "cost_usd": TrajectoryLog(c.log).run_cost(run)}


def export(ctx: LoopContext, done: Outputs) -> dict[str, Any]:
    from agentkd.export import ExportFilters, export_dataset
    from agentkd.train import count_targets

    c = ctx.config
    out = c.workdir / f"sft-{_tag(ctx, 'export')}.jsonl"
    with _console().status("exporting the SFT dataset …"):
        card = export_dataset(c.log, [done["collect"]["run"]], out,
                              filters=ExportFilters(val_fraction=c.val_fraction))
    train = card.splits["train"]
    if not train.records or not count_targets(out):
        raise ConfigError(f"the teacher won none of its {c.train_games} train games, so there "
                          f"is nothing to train on; raise --train-games or --collect-max-steps")
    ctx.say(f"export: {train.records} records from {train.episodes} episodes, "
            f"{card.tokens.total:,} tokens → {out}")
    return {"data": str(out), "records": train.records, "episodes": card.episodes_kept,
            "tokens": card.tokens.total}


def train(ctx: LoopContext, done: Outputs) -> dict[str, Any]:
    c = ctx.config
    return _train(ctx, Path(done["export"]["data"]), c.base,
                  c.workdir / f"student-{_tag(ctx, 'train')}", epochs=c.epochs,
                  max_records=c.max_records)


def _train(ctx: LoopContext, data: Path, base: str, out: Path, *, epochs: float,
           max_records: int | None, eval_data: Path | None = None) -> dict[str, Any]:
    """LoRA SFT of `base` on `data` into `out` (merged, GGUF), resumable; its outputs with
    the CPU seconds of every attempt."""
    from agentkd.train import TrainConfig
    from agentkd.train import train as run_training

    c = ctx.config
    config = TrainConfig(data=data, eval_data=eval_data, base=base, out=out, r=c.r,
                         alpha=c.alpha, lr=c.lr, epochs=epochs, grad_accum=c.grad_accum,
                         max_length=c.max_length, max_records=max_records,
                         save_steps=c.save_steps, eval_limit=c.eval_limit, threads=c.threads,
                         merge=True, gguf=True)
    # CPU seconds of every attempt add up: an interrupted run's work is paid for too.
    spent_file = out / "cpu_seconds.json"
    spent = json.loads(spent_file.read_text()) if spent_file.is_file() else 0.0
    start = time.process_time()
    try:
        report = run_training(config, log=ctx.say)
    finally:
        spent += time.process_time() - start
        out.mkdir(parents=True, exist_ok=True)
        spent_file.write_text(json.dumps(round(spent, 1)))
    assert report.gguf is not None  # gguf=True on a GGUF base (checked before the loop)
    return {"out": str(out), "student": f"local/{report.gguf}", "steps": report.steps,
            "train_seconds": report.train_seconds, "cpu_seconds": round(spent, 1),
            "eval_loss_before": report.eval_loss_before,
            "eval_loss_after": report.eval_loss_after,
            "next_action_match": report.tuned_eval.accuracy if report.tuned_eval else None}


def dagger(ctx: LoopContext, done: Outputs) -> dict[str, Any]:
    """One DAgger round: the tuned student serves train games it was not trained on, with
    demos and the cascade as at serve time and the teacher labelling every step (shadow);
    every labelled step, in the prompt the student saw and answered with the teacher's
    action, joins the SFT records, and the tuned student trains on them. Won or lost, the
    episodes count: the states where the student went wrong are the ones to learn."""
    from agentkd.export import ExportFilters, export_dataset
    from agentkd.log import TrajectoryLog

    c, tag = ctx.config, _tag(ctx, "dagger")
    student = done["train"]["student"]
    if not c.dagger_games:
        return {"student": student, "run": None, "cost_usd": 0.0, "cpu_seconds": 0.0}
    run = _play(ctx, "dagger train", mode="distill", split="train", offset=c.train_games,
                episodes=c.dagger_games, student=student, demos=done["collect"]["demos"],
                run=f"loop-dagger-{tag}", max_steps=c.dagger_max_steps,
                cascade=_shadow_cascade(c))
    labelled = c.workdir / f"sft-dagger-{tag}.labels.jsonl"
    with _console().status("exporting the teacher's labels …"):
        card = export_dataset(c.log, [run], labelled, filters=ExportFilters(
            success_only=False, granularity="step", answers="teacher", val_fraction=0.0))
    # DAgger trains on the aggregate: the collected records and the new labels.
    data = c.workdir / f"sft-dagger-{tag}.jsonl"
    data.write_text(Path(done["export"]["data"]).read_text(encoding="utf-8")
                    + labelled.read_text(encoding="utf-8"), encoding="utf-8")
    ctx.say(f"dagger: {card.splits['train'].records} labelled steps "
            f"({card.steps_by_source}) + the {done['export']['records']} collected records "
            f"→ {data}")
    student_gguf = Path(student.removeprefix("local/"))
    trained = _train(ctx, data, str(student_gguf), c.workdir / f"student-dagger-{tag}",
                     epochs=c.dagger_epochs, max_records=c.dagger_max_records,
                     eval_data=_validation(Path(done["export"]["data"])))
    return {**trained, "run": run, "labels": card.splits["train"].records,
            "cost_usd": TrajectoryLog(c.log).run_cost(run)}


def _validation(data: Path) -> Path | None:
    from agentkd.export import validation_path

    path = validation_path(data)
    return path if path.is_file() else None


def _shadow_cascade(c: LoopConfig) -> dict[str, Any]:
    """The paper's unanimity rule with loops deferred, the teacher labelling every step."""
    return {"samples": c.samples, "shadow": 1.0, "shadow_seed": 0, "defer_loops": True}


def calibrate(ctx: LoopContext, done: Outputs) -> dict[str, Any]:
    from agentkd.cascades.calibration import calibrate_log, plot_curve
    from agentkd.cascades.cli import _print_result
    from agentkd.config import Cascade, save_cascade
    from agentkd.log import TrajectoryLog

    c, tag = ctx.config, _tag(ctx, "calibrate")
    run = _play(ctx, "calibrate valid_train", mode="distill", split="valid_train",
                student=done["dagger"]["student"], episodes=c.calibrate_games,
                demos=done["collect"]["demos"], run=f"loop-shadow-{tag}", max_steps=c.max_steps,
                cascade=_shadow_cascade(c))
    with _console().status("fitting acceptance rules on the labelled steps …"):
        result = calibrate_log(TrajectoryLog(c.log), [run], target_accuracy=c.target_accuracy,
                               confidence=c.confidence, bootstrap=c.bootstrap, require=False)
    out = c.workdir / f"cascade-{tag}.json"
    png = plot_curve(result, out.with_suffix(".png"))
    _print_result(result, out, png)
    if result.chosen is not None:
        cascade = result.cascade().model_copy(update={"defer_loops": True})
        save_cascade(out, cascade, result.summary())
    else:  # too few labels for any rule to show the target: the paper's unanimity rule
        cascade = Cascade.model_validate({"samples": c.samples, "defer_loops": True})
        save_cascade(out, cascade, {"fallback": "paper rule", "problem": result.problem})
        ctx.say(f"calibrate: no rule qualified ({result.problem}); distilling with the "
                f"paper's rule (N={c.samples}, unanimous)")
    return {"run": run, "cascade_file": str(out), "calibrated": result.chosen is not None,
            "problem": result.problem, "labelled_steps": result.labelled_steps,
            "cascade": cascade.model_dump(mode="json")}


def distill(ctx: LoopContext, done: Outputs) -> dict[str, Any]:
    c, tag = ctx.config, _tag(ctx, "distill")
    games = {"split": "valid_seen", "episodes": c.eval_games, "max_steps": c.max_steps}
    baseline = _play(ctx, "teacher valid_seen", mode="teacher", run=f"loop-teacher-{tag}",
                     **games)
    run = _play(ctx, "distill valid_seen", mode="distill", student=done["dagger"]["student"],
                demos=done["collect"]["demos"], run=f"loop-distill-{tag}",
                cascade=dict(done["calibrate"]["cascade"]), **games)
    return {"baseline_run": baseline, "distill_run": run}


def one_time_cost(done: Outputs) -> tuple[float, float]:
    """What a user pays once, from the phases' outputs: (USD of the teacher's games that made
    training data: collection and DAgger labels, CPU seconds of every training)."""
    dagger = done.get("dagger", {})
    return (float(done["collect"]["cost_usd"]) + float(dagger.get("cost_usd", 0.0)),
            float(done["train"]["cpu_seconds"]) + float(dagger.get("cpu_seconds", 0.0)))


def report(ctx: LoopContext, done: Outputs) -> dict[str, Any]:
    """The summaries of this loop's runs, and the distill run against the baseline with the
    one-time cost (collection + training) amortised: report.py's rule withholds the saving
    below the teacher's 95% interval."""
    from agentkd.learning import learning_curve, plot_learning_curves
    from agentkd.log import TrajectoryLog
    from agentkd.report import run_summaries, summary_table, versus_baseline

    c = ctx.config
    log = TrajectoryLog(c.log)
    runs = [done["collect"]["run"], done["dagger"]["run"], done["calibrate"]["run"],
            done["distill"]["baseline_run"], done["distill"]["distill_run"]]
    runs = [run for run in runs if run is not None]
    summaries = run_summaries(log, run_ids=runs)
    collect_usd, cpu_seconds = one_time_cost(done)
    train_usd = cpu_seconds / 3600 * c.train_usd_per_cpu_hour
    versus = versus_baseline(log, done["distill"]["distill_run"],
                             done["distill"]["baseline_run"], collect_usd + train_usd)
    curve = learning_curve(log, done["distill"]["distill_run"])
    png = plot_learning_curves({"distill": curve}, c.workdir / "learning_curve.png",
                               title=f"tuned {c.base}, teacher {c.teacher}")
    body = {
        "config": c.model_dump(mode="json"), "log": c.log, "runs": runs,
        "learning_curve": {"png": str(png), "points": [asdict(p) for p in curve]},
        "student": done["dagger"]["student"], "cascade": done["calibrate"]["cascade"],
        "calibrated": done["calibrate"]["calibrated"],
        "one_time_cost": {"collect_usd": collect_usd, "train_cpu_seconds": cpu_seconds,
                          "train_usd_per_cpu_hour": c.train_usd_per_cpu_hour,
                          "train_usd": train_usd, "total_usd": collect_usd + train_usd},
        "distill_vs_teacher": versus,
        "summaries": [s.model_dump(mode="json") for s in summaries],
    }
    path = c.workdir / REPORT_FILE
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    console = _console()
    console.print(summary_table(summaries, title="agentkd loop", width=console.width))
    if versus["break_even_episodes"] is not None:
        line = (f"break-even after {versus['break_even_episodes']:.0f} episodes (teacher games "
                f"${collect_usd:.4f} + training {cpu_seconds / 3600:.3f} CPU-h × "
                f"${c.train_usd_per_cpu_hour:g} = ${train_usd:.4f})")
    else:
        line = f"no saving or break-even claimed: {versus['saving_withheld']}"
    ctx.say(f"{line}\nwrote {path} and {png}")
    return {"report": str(path), "break_even_episodes": versus["break_even_episodes"],
            "saving_withheld": versus["saving_withheld"]}


PHASES: tuple[Phase[LoopContext], ...] = (
    Phase("collect", _collect_settings, collect),
    Phase("export", _settings("val_fraction"), export),
    Phase("train", _settings("base", "epochs", "max_length", "max_records", "grad_accum",
                             "lr", "r", "alpha", "eval_limit"), train),
    Phase("dagger", _settings("dagger_games", "dagger_max_steps", "dagger_epochs",
                              "dagger_max_records", "samples", "k"), dagger),
    Phase("calibrate", _settings("calibrate_games", "max_steps", "samples", "k",
                                 "target_accuracy", "confidence", "bootstrap"), calibrate),
    Phase("distill", _settings("eval_games", "max_steps", "samples", "k"), distill),
    Phase("report", _settings("train_usd_per_cpu_hour"), report),
)


def check(config: LoopConfig) -> None:
    """Raise the error a phase would hit, before any phase runs: a workdir that is a file,
    an unknown teacher, missing ALFWorld data, a base that is not a GGUF model."""
    from agentkd.envs.alfworld import list_games
    from agentkd.envs.bench import check_model
    from agentkd.train import resolve_base

    if config.workdir.exists() and not config.workdir.is_dir():
        raise ConfigError(f"--workdir {config.workdir} is a file; pass a folder (created if "
                          f"missing), e.g. --workdir runs/loop")
    check_model(config.teacher)
    for split, wanted in (("train", config.train_games), ("valid_train", config.calibrate_games),
                          ("valid_seen", config.eval_games)):
        found = len(list_games(split, config.data))
        if found < wanted:
            raise ConfigError(f"ALFWorld split {split!r} has {found} games, fewer than the "
                              f"{wanted} asked for; ask for at most {found}")
    if resolve_base(config.base)[1] is None:
        raise ConfigError(f"--base {config.base!r} is not a GGUF model: the loop serves the "
                          f"tuned student through llama.cpp, which needs a .gguf base (a file "
                          f"or local/smollm2-135m)")


def run_loop(config: LoopConfig, say: Callable[[str], None] | None = None,
             phases: tuple[Phase[LoopContext], ...] = PHASES) -> dict[str, Any]:
    """Run the loop, skipping finished phases; returns each phase's outputs by name.

    Ctrl-C raises `agentkd.loop.phases.PhaseInterrupted` (a KeyboardInterrupt) naming the
    phase; rerun with the same config to continue. `phases` replaces the phases' work (tests).
    """
    if say is None:
        def say(message: str) -> None:
            _console().print(message, highlight=False)

    check(config)
    config.workdir.mkdir(parents=True, exist_ok=True)
    context = LoopContext(config, say)
    context.tags = fingerprints(phases, context)
    return {name: dict(outputs)
            for name, outputs, _ in run_phases(phases, context, config.workdir, say)}
