"""Where should retrieved demos go in the student's prompt? Measure the reusable prefix.

llama.cpp (like OpenAI/Anthropic prompt caching) reuses the unchanged prefix of the previous
prompt. Demos change every step, so everything after them is re-evaluated. This replays real
ALFWorld steps (the expert acts; the student only reads the prompt, max_tokens=1) through the
reference agent's prompt with demos in the system message vs. just before the latest
observation, and counts the prompt tokens llama.cpp had to evaluate per step.

    python benchmarks/prompt_layout.py [--model local/smollm2-135m] [--steps 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/alfworld.py shares its name with the alfworld package: keep this folder off the
# import path, or `import alfworld` inside agentkd.envs would import the benchmark script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

import litellm
from rich.console import Console
from rich.table import Table

import agentkd  # noqa: F401  (registers the local provider, offline price map)
from agentkd.config import Retrieval
from agentkd.envs import expert
from agentkd.envs.alfworld import AlfWorldEnv, list_games
from agentkd.envs.bench import BenchConfig, run_bench
from agentkd.envs.react import _prompt
from agentkd.retrieval import DemoStore, default_template, inject_demos
from agentkd.retrieval.keys import StepKey


def replay(model: str, store: DemoStore, placement: str, game: Path, steps: int) -> list[dict]:
    env = AlfWorldEnv(game)
    first, _ = env.reset()
    observation, turns, rows = first, [], []
    config = Retrieval(k=3, window_before=1, window_after=1)
    try:
        for _ in range(steps):
            messages = _prompt(first, turns, observation, env.admissible_actions, history=12)
            windows = store.search(StepKey(goal=env.goal, observation=observation), config)
            prompt = inject_demos(messages, default_template(windows), placement)
            start = time.perf_counter()
            reply = litellm.completion(model=model, messages=prompt, max_tokens=1,
                                       temperature=0.0)
            timing = reply._hidden_params["local_timings"][0]
            rows.append({"prompt_tokens": timing["prompt_tokens"],
                         "evaluated": timing["prompt_eval_tokens"],
                         "ms": (time.perf_counter() - start) * 1000})
            action = env.expert_action or "look"
            observation, _, done, _ = env.step(action)
            turns.append((f"Action: {action}", observation))
            if done:
                break
    finally:
        env.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="local/smollm2-135m")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--demo-games", type=int, default=10)
    args = parser.parse_args()
    expert.register()
    tmp = Path(tempfile.mkdtemp())
    run_bench(BenchConfig(mode="collect", split="train", episodes=args.demo_games,
                          demos=str(tmp / "demos"), log=f"sqlite:///{tmp / 'log.db'}"))
    store = DemoStore.open(tmp / "demos")
    game = list_games("valid_seen")[2]
    results = {}
    for placement in ("system", "before_observation"):
        replay(args.model, store, placement, list_games("valid_seen")[5], 2)  # warm-up
        rows = replay(args.model, store, placement, game, args.steps)
        results[placement] = {
            "steps": len(rows),
            "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in rows),
            "evaluated_tokens_mean": statistics.mean(r["evaluated"] for r in rows[1:]),
            "reused_share": 1 - sum(r["evaluated"] for r in rows[1:])
            / sum(r["prompt_tokens"] for r in rows[1:]),
            "ms_median": statistics.median(r["ms"] for r in rows[1:]),
        }
    table = Table(title=f"Demo placement vs prompt-prefix reuse ({args.model}, k=3 windows)")
    for column in ("placement", "steps", "prompt tokens", "evaluated tokens/step",
                   "reused share", "median ms/step"):
        table.add_column(column)
    for placement, r in results.items():
        table.add_row(placement, str(r["steps"]), f"{r['prompt_tokens_mean']:.0f}",
                      f"{r['evaluated_tokens_mean']:.0f}", f"{r['reused_share']:.0%}",
                      f"{r['ms_median']:.0f}")
    Console().print(table)
    out = Path(__file__).parent / "results" / "prompt_layout.json"
    out.write_text(json.dumps({"model": args.model, "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
