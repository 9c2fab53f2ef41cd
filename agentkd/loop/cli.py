"""`agentkd loop alfworld`: the closed loop as one resumable command."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from agentkd.errors import AgentKDError
from agentkd.loop.alfworld import DEFAULT_USD_PER_CPU_HOUR, LoopConfig, run_loop
from agentkd.loop.phases import PhaseInterrupted

loop_app = typer.Typer(help="Run the closed loop: collect, export, train, calibrate, distill, "
                            "report.", no_args_is_help=True)


@loop_app.command("alfworld")
def loop_alfworld(
    workdir: Path = typer.Option(Path("runs/loop"), help="Folder of the loop's log, demos, "
                                 "dataset, student, cascade, phases/ markers and report.json."),
    teacher: str = typer.Option("alfworld/rescue", help="Teacher of collect and of the "
                                "baseline: alfworld/rescue, alfworld/expert, alfworld/planner "
                                "or an LLM (litellm string)."),
    base: str = typer.Option("local/smollm2-135m", help="GGUF base of the student (a .gguf "
                             "file or local/<name>)."),
    train_games: int = typer.Option(8, help="Train games the teacher plays to collect demos "
                                    "and the SFT data."),
    collect_max_steps: int = typer.Option(50, help="Step cap per collect episode."),
    val_fraction: float = typer.Option(0.1, help="Share of collected episodes held out of "
                                       "training (validation loss, next-action match)."),
    epochs: float = typer.Option(1.0, help="Training epochs."),
    max_length: int = typer.Option(512, help="Token cap per training record."),
    max_records: int = typer.Option(None, help="Train on a seeded sample of N records."),
    grad_accum: int = typer.Option(4, help="Gradient accumulation steps (batch size 1)."),
    lr: float = typer.Option(2e-4, help="Learning rate."),
    r: int = typer.Option(64, help="LoRA rank."),
    alpha: int = typer.Option(128, help="LoRA alpha."),
    save_steps: int = typer.Option(5, help="Checkpoint every N optimiser steps (an "
                                   "interrupted training resumes from the last one)."),
    eval_limit: int = typer.Option(20, help="Held-out actions scored after training."),
    threads: int = typer.Option(None, help="CPU threads for torch while training."),
    dagger_games: int = typer.Option(0, help="DAgger round: train games (after the "
                                     "collected ones) the tuned student plays while the "
                                     "teacher labels every step; it trains on the labels "
                                     "(0: no round)."),
    dagger_max_steps: int = typer.Option(20, help="Step cap per DAgger game."),
    dagger_epochs: float = typer.Option(1.0, help="Epochs over the DAgger data (the "
                                        "collected records + the labels)."),
    dagger_max_records: int = typer.Option(None, help="DAgger round: train on a seeded "
                                           "sample of N records."),
    calibrate_games: int = typer.Option(2, help="valid_train games of the shadow run that "
                                        "calibrates the cascade."),
    eval_games: int = typer.Option(4, help="valid_seen games of the distill run and of the "
                                   "teacher baseline."),
    max_steps: int = typer.Option(20, help="Step cap per episode of calibrate, distill and "
                                  "the baseline."),
    samples: int = typer.Option(3, help="Student samples per step."),
    k: int = typer.Option(3, help="Demo windows per step."),
    target_accuracy: float = typer.Option(0.95, help="Accepted-step accuracy the calibrated "
                                          "rule must reach."),
    confidence: float = typer.Option(0.95, help="Confidence of that accuracy (bootstrap)."),
    train_usd_per_cpu_hour: float = typer.Option(
        DEFAULT_USD_PER_CPU_HOUR, help="Price of a CPU-hour of training in the break-even "
        "(about an on-demand cloud vCPU-hour)."),
    data: str = typer.Option(None, help="ALFWorld data folder (default: ALFWORLD_DATA or "
                             "the shared data)."),
    workers: int = typer.Option(1, help="Games played at once, each in its own process "
                                "(a local student gets its share of the cores)."),
) -> None:
    """Collect → export → train → [dagger] → calibrate → distill → report on ALFWorld,
    resumable.

    A finished phase is skipped on a rerun (phases/<name>.json marks it done).
    Changing a phase's options redoes that phase and every later one.
    Ctrl-C, then the same command again, continues the phase that was running.
    """
    options = dict(locals())  # the options above, named as LoopConfig's fields
    from agentkd.cli import fail

    try:
        config = LoopConfig(**options)
    except ValidationError as exc:
        error = exc.errors()[0]
        fail(f"bad loop option --{str(error['loc'][0]).replace('_', '-')}: {error['msg']}")
        return
    from agentkd.envs.cli import console

    try:
        outputs = run_loop(config)
    except KeyboardInterrupt as exc:
        during = f" during {exc.phase}" if isinstance(exc, PhaseInterrupted) else ""
        console.print(f"[yellow]interrupted[/yellow]{during}; finished phases are kept: "
                      f"rerun the same command to continue")
        raise typer.Exit(130) from None
    except AgentKDError as exc:
        fail(str(exc))
        return
    console.print(f"report: {outputs['report']['report']} (again: agentkd report --log "
                  f"{config.log})", highlight=False, soft_wrap=True)
