"""Rescue rate: from the state a student left after k actions, how often a teacher alone wins.

A cascade defers to the teacher in states the student made. A teacher that only wins from the
start (the handcoded expert tracks a plan of its own) saves few of those episodes. For each
game the student (the 1.5B model in the reference ReAct agent) plays its first `max(ks)`
actions once; they are cached, so a rerun or a longer run resumes. Then for every k and every
teacher a fresh episode replays the student's first k actions and the teacher plays alone from
there (up to `--max-steps` steps in all, as a bench episode). k = 0 is the teacher alone from
the start.

    python benchmarks/rescue.py --games 24 --stratify      # a subset, one task type in turn
    python benchmarks/rescue.py                            # the whole valid_seen split
    python benchmarks/rescue.py --student random --out benchmarks/results/rescue_random.json \
        --prefixes benchmarks/results/rescue_random_prefixes.json   # seeded random student

Writes benchmarks/results/rescue.json (after every game, so a partial run has its numbers) and
keeps the student's actions in benchmarks/results/rescue_prefixes.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import zlib
from pathlib import Path
from typing import Any

# benchmarks/alfworld.py shares its name with the alfworld package: keep this folder off the
# import path, or `import alfworld` inside agentkd.envs would import the benchmark script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from rich.console import Console
from rich.table import Table

from agentkd.envs.alfworld import TEACHERS, AlfWorldEnv, list_games
from agentkd.envs.bench import stratified

RESULTS = Path(__file__).parent / "results"
console = Console()


def student_prefix(env: AlfWorldEnv, student: str, steps: int, history: int) -> dict[str, Any]:
    """The student's first `steps` actions on this game (fewer if it wins or loses earlier)."""
    from agentkd.envs.react import react_agent

    started = time.perf_counter()
    result = react_agent(env, student, max_steps=steps, history=history, temperature=0.1)
    return {"actions": result.actions, "won": result.success,
            "seconds": round(time.perf_counter() - started, 1)}


def random_prefix(env: AlfWorldEnv, steps: int, seed: int) -> dict[str, Any]:
    """`steps` actions drawn uniformly from the admissible commands, seeded per game.

    A stand-in student for the whole split: the 1.5B model takes ~50 s per action on two
    cores, so 140 games x 10 actions would take about 20 hours. Random actions open, take and
    move things a real student would not, so the rate it gives is a harsher test of rescue.
    """
    draw = random.Random(zlib.crc32(f"{seed}:{env.task_id}".encode()))
    started, actions, won = time.perf_counter(), [], False
    env.reset()
    for _ in range(steps):
        action = draw.choice(env.admissible_actions or ["look"])
        actions.append(action)
        _, _, done, _ = env.step(action)
        if done:
            won = env.won
            break
    return {"actions": actions, "won": won, "seconds": round(time.perf_counter() - started, 1)}


def rescue(env: AlfWorldEnv, prefix: list[str], teacher: str, max_steps: int) -> dict[str, Any]:
    """Replay `prefix`, then let `teacher` play alone; did the episode end won?"""
    env.reset()
    for action in prefix:
        env.step(action)
    started, steps = time.perf_counter(), 0
    while not env.won and len(prefix) + steps < max_steps:
        action = env.teacher_action(teacher)
        assert action is not None  # reset() was called
        _, _, done, _ = env.step(action)
        steps += 1
        if done:
            break
    return {"won": env.won, "teacher_steps": steps,
            "seconds": round(time.perf_counter() - started, 2)}


def rates(results: dict[str, dict[str, Any]], teachers: list[str], ks: list[int]
          ) -> dict[str, dict[str, dict[str, float | int]]]:
    """teacher → k → {won, games, rate, mean teacher steps of the won episodes}."""
    table: dict[str, dict[str, dict[str, float | int]]] = {}
    for teacher in teachers:
        table[teacher] = {}
        for k in ks:
            runs = [r[f"{teacher}@{k}"] for r in results.values() if f"{teacher}@{k}" in r]
            won = [r for r in runs if r["won"]]
            table[teacher][str(k)] = {
                "won": len(won), "games": len(runs),
                "rate": round(len(won) / len(runs), 3) if runs else 0.0,
                "mean_steps_won": (round(sum(r["teacher_steps"] for r in won) / len(won), 1)
                                   if won else 0.0)}
    return table


def print_table(table: dict[str, dict[str, dict[str, float | int]]], ks: list[int],
                title: str) -> None:
    out = Table(title=title)
    out.add_column("teacher")
    for k in ks:
        out.add_column("alone" if k == 0 else f"after {k} student actions", justify="right")
    for teacher, by_k in table.items():
        out.add_row(f"alfworld/{teacher}", *(
            f"{c['won']}/{c['games']} ({c['rate']:.0%})" for c in (by_k[str(k)] for k in ks)))
    console.print(out)


def main() -> None:
    command = " ".join(["python", *sys.argv])  # before fast-downward's translator rewrites it
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", default="valid_seen")
    parser.add_argument("--games", type=int, default=None, help="default: the whole split")
    parser.add_argument("--stratify", action="store_true",
                        help="take the games round-robin over task types")
    parser.add_argument("--ks", default="0,2,5,10", help="student actions before the teacher")
    parser.add_argument("--teachers", default=",".join(TEACHERS))
    parser.add_argument("--student", default="local/qwen2.5-coder-1.5b",
                        help="a model, or 'random' (uniform admissible actions, --seed)")
    parser.add_argument("--seed", type=int, default=0, help="the random student's seed")
    parser.add_argument("--max-steps", type=int, default=50, help="episode cap, prefix included")
    parser.add_argument("--history", type=int, default=12)
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", type=Path, default=RESULTS / "rescue.json")
    parser.add_argument("--prefixes", type=Path, default=RESULTS / "rescue_prefixes.json")
    args = parser.parse_args()
    ks = sorted({int(k) for k in args.ks.split(",")})
    if args.student == "random":  # the seed is part of who the student is
        args.student = f"random:seed={args.seed}"
    teachers = args.teachers.split(",")
    unknown = set(teachers) - set(TEACHERS)
    if unknown or ks[0] < 0 or (args.games is not None and args.games < 1):
        parser.error(f"--teachers from {', '.join(TEACHERS)}; --ks >= 0; --games >= 1 "
                     f"(unknown teachers: {sorted(unknown)})")

    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    from agentkd import local_models

    local_models.register()
    games = list_games(args.split, args.data)
    if args.games is not None:
        games = stratified(games, args.games) if args.stratify else games[: args.games]
    prefixes: dict[str, Any] = (json.loads(args.prefixes.read_text())
                                if args.prefixes.exists() else {})
    saved = json.loads(args.out.read_text()) if args.out.exists() else {}
    # Earlier results stay valid only for the same student and cap.
    same = saved.get("student") == args.student and saved.get("max_steps") == args.max_steps
    results: dict[str, dict[str, Any]] = saved.get("games", {}) if same else {}

    selected: list[str] = []
    for index, game in enumerate(games, 1):
        env = AlfWorldEnv(game)
        selected.append(env.task_id)
        try:
            prefix = prefixes.get(env.task_id)
            if prefix is None or prefix["student"] != args.student \
                    or len(prefix["actions"]) < max(ks) and not prefix["ended"]:
                played = (random_prefix(env, max(ks), args.seed)
                          if args.student.startswith("random:")
                          else student_prefix(env, args.student, max(ks), args.history))
                prefix = {"student": args.student, "task_type": env.task_type,
                          "ended": len(played["actions"]) < max(ks), **played}
                prefixes[env.task_id] = prefix
                args.prefixes.write_text(json.dumps(prefixes, indent=1))
            runs = results.setdefault(env.task_id, {"task_type": env.task_type})
            for k in ks:
                for teacher in teachers:
                    if f"{teacher}@{k}" not in runs:
                        runs[f"{teacher}@{k}"] = rescue(env, prefix["actions"][:k], teacher,
                                                        args.max_steps)
        finally:
            env.close()
        won = " ".join(f"{t}@{k}={'W' if runs[f'{t}@{k}']['won'] else '-'}"
                       for k in ks for t in teachers)
        console.print(f"[dim]{index}/{len(games)} {env.task_id}: {won}[/dim]")
        table = rates({g: results[g] for g in selected}, teachers, ks)
        args.out.write_text(json.dumps({
            "split": args.split, "student": args.student, "max_steps": args.max_steps,
            "ks": ks, "games_done": len(selected), "rates": table, "games": results,
            "command": command}, indent=1))
    print_table(rates({g: results[g] for g in selected}, teachers, ks), ks,
                f"Rescue rate on {len(selected)} {args.split} games (student {args.student})")


if __name__ == "__main__":
    main()
