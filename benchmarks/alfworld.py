"""ALFWorld: success, steps, cost, relative cost, teacher-call rate and break-even per mode.

Collects demos with the teacher on train games, then plays the same valid_seen subset in
every mode with the reference ReAct agent, all in one log. Resumable: rerun with the same
--workdir and it continues where it stopped.

    python benchmarks/alfworld.py --train-games 60 --games 6 --max-steps 20

Games are taken round-robin over the six task types (`--stratify` in the CLI), so `--games 6`
is one game of each type.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# benchmarks/alfworld.py shares its name with the alfworld package: keep this folder off the
# import path, or `import alfworld` inside agentkd.envs would import the benchmark script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from rich.console import Console

from agentkd.cascades.actions import normalize_action
from agentkd.envs.bench import BenchConfig, run_bench
from agentkd.envs.react import closest_admissible, listed_admissible
from agentkd.log import TrajectoryLog
from agentkd.report import run_summaries, summary_table


def step_diagnostics(log: TrajectoryLog, run_id: str) -> dict[str, float | int]:
    """Why a mode won or lost, from its logged steps.

    `repeat_share`: steps that resend the previous command to the same observation (a looping
    agent); `mapped_share`: student actions that were not admissible as written and that the
    reference agent mapped to the nearest admissible command.
    """
    latencies, repeats, deferred, student_steps, mapped = [], 0, 0, 0, 0
    for episode in log.episodes(run_id):
        previous = None
        for step in log.steps(episode.id):
            latencies.append(step.latency_ms / 1000)
            now = (step.final_action, step.observation)
            repeats += previous == now
            previous = now
            deferred += step.verdict == "deferred"
            # The reference agent lists the admissible commands last in the latest user turn
            # (the step's retrieval key leaves them out: read them from what the step saw).
            latest = [m.get("content") for m in step.new_messages or ()
                      if m.get("role") == "user" and isinstance(m.get("content"), str)]
            admissible = listed_admissible(latest[-1] if latest else "")
            if step.actor == "teacher" or not admissible:
                continue
            student_steps += 1
            action = step.final_action or ""
            mapped += (normalize_action(action) not in map(normalize_action, admissible)
                       and closest_admissible(action, admissible) is not None)
    steps = len(latencies)
    return {"steps": steps, "median_step_s": statistics.median(latencies) if steps else 0.0,
            "repeat_share": repeats / steps if steps else 0.0, "deferred_steps": deferred,
            "mapped_share": mapped / student_steps if student_steps else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".agentkd/bench-alfworld"))
    parser.add_argument("--teacher", default="alfworld/expert")
    parser.add_argument("--student", default="local/qwen2.5-coder-1.5b")
    parser.add_argument("--train-games", type=int, default=60)
    parser.add_argument("--games", type=int, default=10, help="valid_seen games per mode")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--modes", default="teacher,student,icd,distill")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1,
                        help="games played at once (each worker gets cores / W threads)")
    parser.add_argument("--ray", default=None,
                        help="play on a one-node Ray cluster (auto, local or HOST:PORT; the "
                             "log is SQLite): --workers actors, 0 for one per CPU")
    parser.add_argument("--placement", default=None,
                        help="where demos go: system | before_observation (default: Retrieval's)")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    log = f"sqlite:///{(args.workdir / 'log.db').resolve()}"
    demos = str(args.workdir / "demos")
    retrieval = {"k": args.k, "window_before": 1, "window_after": 1}
    if args.placement:
        retrieval["placement"] = args.placement
    plan = [("collect", "train", args.train_games, 50)]
    plan += [(mode, "valid_seen", args.games, args.max_steps) for mode in args.modes.split(",")]
    console = Console()
    out = Path(__file__).parent / "results" / "alfworld.json"
    runs, timings = [], {}
    for mode, split, games, steps in plan:
        run_id = f"bench-{mode}"
        start = time.perf_counter()
        _, outcomes = run_bench(BenchConfig(
            mode=mode, teacher=args.teacher, student=args.student, split=split, episodes=games,
            stratify=True, workers=args.workers, ray=args.ray,
            demos=demos if mode in ("collect", "icd", "distill") else None, log=log,
            run=run_id, resume=True, max_steps=steps, retrieval=retrieval),
            on_episode=lambda o, m=mode: console.print(
                f"[dim]{m}: {o.task_id} success={o.success} steps={o.steps} "
                f"invalid={o.invalid_actions} teacher_steps={o.teacher_steps}[/dim]"))
        timings[run_id] = {"seconds": time.perf_counter() - start, "episodes_now": len(outcomes)}
        runs.append(run_id)
        # Written after every mode, so a run cut short still leaves its finished modes' numbers.
        summaries = run_summaries(TrajectoryLog(log), run_ids=runs)
        out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                   "runs": [s.model_dump() for s in summaries],
                                   "diagnostics": {r: step_diagnostics(TrajectoryLog(log), r)
                                                   for r in runs},
                                   "timings": timings}, indent=2))
    console.print(summary_table(summaries, title="ALFWorld (valid_seen subset)",
                                width=console.width))
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
