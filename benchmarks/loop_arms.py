"""Arms of a finished `agentkd loop` training, on the first N stratified valid_seen games.

The loop's distill phase is one cascade setting on `--eval-games` games; on 2 cores the whole
split takes hours. This plays other cascade settings with the loop's own tuned student, demo
store, teacher, retrieval and step cap on the first N stratified games (resumable: the same
command continues a run), then prints every arm beside the teacher-only baseline on exactly
those games (with the objects taken that the task does not name, per episode), by the report's
rule (`agentkd.report.versus_baseline`: no saving below the teacher's 95% interval; the break-
even pays off collection + training at the loop's CPU rate).

    python benchmarks/loop_arms.py --workdir runs/loopP --games 24 \
        --baseline loop-teacher-408a8d6b --arm loop-distill-408a8d6b \
        --arm loop-distill-rep1:defer_repeats=1 --out benchmarks/results/loop_prior.json

An arm is `RUN` (already in the log) or `RUN:key=value,...` (cascade settings added to the
loop's; played first where it has unfinished games).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

# benchmarks/alfworld.py shares its name with the alfworld package: keep this folder off the
# import path, or `import alfworld` inside agentkd.envs would import the benchmark script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from rich.console import Console
from rich.table import Table

from agentkd.envs.alfworld import list_games, takes_what_the_task_does_not_name
from agentkd.envs.bench import stratified
from agentkd.log import Episode, Run, TrajectoryLog
from agentkd.loop.alfworld import LoopConfig, LoopContext, _play, one_time_cost, trained_student
from agentkd.loop.phases import Marker, read_marker
from agentkd.report import versus_baseline, wilson_interval

console = Console()


def _arm(text: str) -> tuple[str, dict[str, Any]]:
    run, _, settings = text.partition(":")
    try:
        cascade = {k: json.loads(v)
                   for k, v in (kv.split("=", 1) for kv in settings.split(",") if kv)}
    except ValueError:
        sys.exit(f"--arm {text!r}: write RUN or RUN:key=value,... with JSON values, "
                 f"e.g. loop-distill-rep1:defer_repeats=1")
    return run, cascade


def _marker(workdir: Path, phase: str) -> Marker:
    marker = read_marker(workdir, phase)
    if marker is None:
        sys.exit(f"{workdir}: the loop's {phase} phase has not finished; run the loop first")
    return marker


def _loop(workdir: Path, workers: int = 1) -> LoopConfig:
    """The loop's config as its finished phases recorded it."""
    settings: dict[str, Any] = {"workdir": workdir, "workers": workers}
    for phase in ("collect", "export", "train", "calibrate"):
        settings |= _marker(workdir, phase).settings
    dagger = read_marker(workdir, "dagger")
    settings |= dagger.settings if dagger is not None else {}
    # A marker also records what is not an option (collect: the agent's prompt layout).
    return LoopConfig(**{k: v for k, v in settings.items() if k in LoopConfig.model_fields})


def play(workdir: Path, run: str, games: int, cascade: dict[str, Any], workers: int
         ) -> None:
    """The loop's distill phase (its own `_play`: teacher, retrieval, prices) with `cascade`
    added to its cascade, on the first `games`."""
    context = LoopContext(_loop(workdir, workers), say=console.print)
    _play(context, run, mode="distill", split="valid_seen", episodes=games, run=run,
          student=trained_student(workdir).model, max_steps=context.config.max_steps,
          demos=_marker(workdir, "collect").outputs["demos"],
          cascade=_marker(workdir, "calibrate").outputs["cascade"] | cascade)


def _one_time(workdir: Path, log: TrajectoryLog, run: str, loop: LoopConfig) -> float:
    """USD paid once for the student `run` played: collection and training, and the DAgger
    round's labels and training where `run` played the student that round trained."""
    with log.session() as s:
        played = s.get(Run, run)
    student = played.student if played is not None else None
    finished = {phase: marker.outputs for phase in ("collect", "train", "dagger")
                if (marker := read_marker(workdir, phase)) is not None}
    if finished.get("dagger", {}).get("student") != student:
        finished.pop("dagger", None)
    teacher_usd, cpu_seconds = one_time_cost(finished)
    return teacher_usd + cpu_seconds / 3600 * loop.train_usd_per_cpu_hour


def wrong_takes(log: TrajectoryLog, episode: Episode) -> int:
    """Objects taken that the task does not name: the student's commonest mistake, each one
    undone by a later step (the cascade's validity now defers such a take)."""
    return sum(takes_what_the_task_does_not_name(step.final_action or "", episode.goal or "")
               for step in log.steps(episode.id))


def figures(log: TrajectoryLog, run: str, tasks: set[str]) -> dict[str, Any]:
    episodes = [e for e in log.episodes(run)
                if e.task_id in tasks and e.status in ("success", "failure")]
    steps = sum(e.n_steps for e in episodes)
    won = sum(bool(e.success) for e in episodes)
    low, high = wilson_interval(won, len(episodes)) or (0.0, 1.0)
    wrong = sum(wrong_takes(log, e) for e in episodes)
    return {"games": len(episodes), "won": won, "interval": [round(low, 3), round(high, 3)],
            "steps_per_episode": round(steps / len(episodes), 1),
            "teacher_call_rate": round(sum(e.teacher_steps for e in episodes) / steps, 3),
            "cost_per_episode": round(sum(e.cost_usd for e in episodes) / len(episodes), 5),
            "wrong_takes_per_episode": round(wrong / len(episodes), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--games", type=int, default=24)
    parser.add_argument("--baseline", required=True, help="the loop's teacher-only run id")
    parser.add_argument("--arm", action="append", default=[], help="RUN or RUN:key=value,...")
    parser.add_argument("--workers", type=int, default=2, help="games at once")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    arms = [_arm(a) for a in args.arm]
    for run, cascade in arms:
        if cascade:
            play(args.workdir, run, args.games, cascade, args.workers)
    loop = _loop(args.workdir)
    log = TrajectoryLog(loop.log, create=False)
    tasks = {f"{g.parent.parent.name}/{g.parent.name}"
             for g in stratified(list_games("valid_seen"), args.games)}
    rows: dict[str, Any] = {args.baseline: figures(log, args.baseline, tasks)}
    for run, cascade in arms:
        versus = versus_baseline(log, run, args.baseline, _one_time(args.workdir, log, run,
                                                                    loop))
        rows[run] = figures(log, run, tasks) | {
            "cascade_added": cascade, "one_time_usd": versus["one_time_usd"],
            "relative_cost": versus["relative_cost"],
            "break_even_episodes": versus["break_even_episodes"],
            "saving_withheld": versus["saving_withheld"]}
    table = Table(title=f"first {args.games} stratified valid_seen games")
    for column in ("run", "won", "95% interval", "steps", "teacher calls", "wrong takes",
                   "$/episode", "vs teacher (games both finished)"):
        table.add_column(column)
    for run, r in rows.items():
        verdict = ("baseline" if run == args.baseline else r["saving_withheld"]
                   or f"{r['relative_cost']:.2f}x, break-even {r['break_even_episodes']:.0f}")
        table.add_row(run, f"{r['won']}/{r['games']}", f"{r['interval'][0]:.0%}–"
                      f"{r['interval'][1]:.0%}", f"{r['steps_per_episode']}",
                      f"{r['teacher_call_rate']:.0%}", f"{r['wrong_takes_per_episode']}",
                      f"{r['cost_per_episode']:.4f}", verdict)
    console.print(table)
    if args.out:
        body = {"command": "python " + " ".join(sys.argv), "arms": rows}
        args.out.write_text(json.dumps(body, indent=2) + "\n")
        console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
