"""A cascade that can succeed: distill against teacher-only with the same teacher, cold start
(no store, `grow_demos`) vs a store collected up front, and the learning curve.

Arms, all on the same stratified valid_seen games, in one log under --workdir:

- ``teacher``: the teacher alone (the baseline; the same teacher as every rescue);
- ``cold``:    distill from an empty store that grows with each won episode's teacher steps;
- ``store``:   distill with demos collected by the same teacher on --train-games train games.

    python benchmarks/cascade.py --teacher alfworld/rescue --student local/qwen2.5-coder-0.5b \
        --games 24 --max-steps 30 [--arms teacher,cold,store] [--defer-loops] [--defer-repeats 2]

Resumable: rerun with the same --workdir and every arm continues where it stopped
(``--report-only`` reports what the log holds without playing). Prints the
report (success with its 95% interval; relative cost only where success is within the
teacher's interval) and writes benchmarks/results/cascade.json and cascade_learning_curve.png
(teacher-call rate and cost per episode against episodes served).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

# This folder holds benchmarks/alfworld.py: off the import path, or `import alfworld` in
# agentkd.envs would import that script instead of the package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from rich.console import Console

from agentkd.envs.bench import BenchConfig
from agentkd.envs.cli import run_with_progress
from agentkd.learning import learning_curve, plot_learning_curves
from agentkd.log import TrajectoryLog
from agentkd.report import run_summaries, summary_table

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".agentkd/bench-cascade"))
    parser.add_argument("--teacher", default="alfworld/rescue")
    parser.add_argument("--student", default="local/qwen2.5-coder-0.5b")
    parser.add_argument("--games", type=int, default=24, help="valid_seen games per arm")
    parser.add_argument("--train-games", type=int, default=60,
                        help="train games the teacher plays to fill the 'store' arm's demos")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--arms", default="teacher,cold,store")
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--defer-loops", action="store_true")
    parser.add_argument("--defer-repeats", type=int, default=None,
                        help="also defer an action already taken this many times")
    parser.add_argument("--window", type=int, default=6, help="running-mean window of the curve")
    parser.add_argument("--out", type=Path, default=RESULTS / "cascade.json")
    parser.add_argument("--report-only", action="store_true",
                        help="play nothing: write the JSON, PNG and table from the log as it is "
                             "(e.g. of a run stopped part-way)")
    args = parser.parse_args()
    arms = args.arms.split(",")
    unknown = set(arms) - {"teacher", "cold", "store"}
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}; choose from teacher, cold, store")

    args.workdir.mkdir(parents=True, exist_ok=True)
    log = f"sqlite:///{(args.workdir / 'log.db').resolve()}"
    common = dict(teacher=args.teacher, student=args.student, log=log, resume=True,
                  stratify=True, retrieval={"k": args.k, "window_before": 1, "window_after": 1},
                  cascade={"samples": args.samples, "defer_loops": args.defer_loops,
                           "defer_repeats": args.defer_repeats})
    plans: dict[str, BenchConfig] = {
        "teacher": BenchConfig(mode="teacher", split="valid_seen", episodes=args.games,
                               max_steps=args.max_steps, run="cascade-teacher", **common),
        "cold": BenchConfig(mode="distill", split="valid_seen", episodes=args.games,
                            max_steps=args.max_steps, run="cascade-cold",
                            demos=str(args.workdir / "grown"), grow_demos=True, **common),
        "store": BenchConfig(mode="distill", split="valid_seen", episodes=args.games,
                             max_steps=args.max_steps, run="cascade-store",
                             demos=str(args.workdir / "collected"), **common),
    }
    if args.report_only:
        arms_to_play: list[str] = []
    else:
        arms_to_play = arms
    if "store" in arms_to_play:  # its demos first: the same teacher on train games
        run_with_progress(BenchConfig(mode="collect", split="train", episodes=args.train_games,
                                      max_steps=50, run="cascade-collect",
                                      demos=str(args.workdir / "collected"), **common),
                          "collect train")
    timings: dict[str, float] = {}
    for arm in arms_to_play:
        start = time.perf_counter()
        run_with_progress(plans[arm], f"{arm:8s} valid_seen")
        timings[arm] = time.perf_counter() - start
        write(args, log, arms, timings)

    if args.report_only:
        write(args, log, arms, timings)
    summaries = run_summaries(TrajectoryLog(log), run_ids=[plans[a].run or a for a in arms])
    console = Console()
    console.print(summary_table(summaries, title=f"cascade: {args.student} with "
                                f"{args.teacher} on {args.games} valid_seen games",
                                width=console.width))
    console.print(f"wrote {args.out} and {args.out.with_name('cascade_learning_curve.png')}")


def write(args: argparse.Namespace, log: str, arms: list[str], timings: dict[str, float]
          ) -> None:
    """The JSON and the PNG from what the log holds now (also after a partial run)."""
    trajectory_log = TrajectoryLog(log)
    runs = [f"cascade-{a}" for a in arms]
    curves = {run: learning_curve(trajectory_log, run, args.window) for run in runs
              if run != "cascade-teacher"}
    png = args.out.with_name("cascade_learning_curve.png")
    if any(curves.values()):
        plot_learning_curves({run.removeprefix("cascade-"): points
                              for run, points in curves.items()}, png,
                             title=f"{args.student}, teacher {args.teacher}",
                             window=args.window)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "runs": [s.model_dump() for s in run_summaries(trajectory_log, run_ids=runs)],
        "learning_curves": {run: [asdict(p) for p in points] for run, points in curves.items()},
        "seconds": timings,
    }, indent=2))


if __name__ == "__main__":
    main()
