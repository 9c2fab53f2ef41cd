"""Where should retrieved demos go in the student's prompt? Measure the reusable prefix.

llama.cpp (like OpenAI/Anthropic prompt caching) reuses the unchanged prefix of the previous
prompt. Demos change every step, so everything after them is re-evaluated. This replays real
ALFWorld steps (the expert acts; the student only reads the prompt, max_tokens=1) through the
reference agent's prompt with demos in the system message vs. just before the latest
observation, counts the prompt tokens llama.cpp had to evaluate per step and, with
--generate, how often the model's next action matches the expert's (accuracy must not drop
for the cheaper layout).

It also prices those steps as two providers would bill them with prompt caching, at the prices
in litellm's map (`agentkd.costs`), with and without the cache credit:

- OpenAI (`OPENAI`): automatic prefix caching of prompts of 1024+ tokens, hits in 128-token
  increments; the cached prefix is the one llama.cpp reused (both cache exact token prefixes;
  the tokenizer is the local model's).
- Anthropic (`ANTHROPIC`), with the whole prompt marked ``cache_control`` at every step (what
  `Cascade(cache_prefix=True)` does): it caches whole blocks, so what is read is the leading
  messages identical to the previous step's prompt (at most what llama.cpp reused); the rest
  is written at 1.25x, once the prompt reaches Sonnet's 1024-token minimum.

    python benchmarks/prompt_layout.py --model local/qwen2.5-coder-1.5b --games 3 --generate
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/alfworld.py shares its name with the alfworld package: keep this folder off the
# import path, or `import alfworld` inside agentkd.envs would import the benchmark script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]
# litellm is imported before agentkd (which sets this too): keep it off the network.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from rich.console import Console
from rich.table import Table

import agentkd  # noqa: F401  (registers the local provider, offline price map)
from agentkd import llm
from agentkd.cascades.actions import default_extractor, normalize_action
from agentkd.config import Retrieval
from agentkd.costs import call_cost, price_per_token
from agentkd.envs import expert
from agentkd.envs.alfworld import AlfWorldEnv, list_games
from agentkd.envs.bench import BenchConfig, run_bench, stratified
from agentkd.envs.react import _prompt, closest_admissible
from agentkd.local_models import close_all, get_llama
from agentkd.retrieval import DemoStore, default_template, inject_demos
from agentkd.retrieval.keys import StepKey

OPENAI, ANTHROPIC = "gpt-4.1-mini", "claude-sonnet-4-5"
MIN_CACHED = 1024
"""Shortest prompt prefix either provider caches (OpenAI: any model; Anthropic: Sonnet)."""
OPENAI_INCREMENT = 128


def openai_cached(reused: int) -> int:
    """Tokens OpenAI bills as cached for a reused prefix of `reused` tokens."""
    if reused < MIN_CACHED:
        return 0
    return MIN_CACHED + (reused - MIN_CACHED) // OPENAI_INCREMENT * OPENAI_INCREMENT


def anthropic_tokens(prompt: int, block_reused: int) -> tuple[int, int]:
    """(cache read, cache write) tokens of a prompt marked whole, `block_reused` of it being
    the leading blocks a previous request cached."""
    if prompt < MIN_CACHED:
        return 0, 0
    read = block_reused if block_reused >= MIN_CACHED else 0
    return read, prompt - read


def common_messages(a: list[dict], b: list[dict]) -> int:
    """How many leading messages `a` and `b` share."""
    shared = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        shared += 1
    return shared


def replay(model: str, store: DemoStore, placement: str, game: Path, steps: int,
           generate: bool = False) -> list[dict]:
    env = AlfWorldEnv(game)
    first, _ = env.reset()
    observation, turns, rows = first, [], []
    config = Retrieval(k=3, window_before=1, window_after=1)
    tokenizer = get_llama(model)
    previous: list[dict] = []
    try:
        for _ in range(steps):
            messages = _prompt(first, turns, observation, env.admissible_actions, history=12)
            windows = store.search(StepKey(goal=env.goal, observation=observation), config)
            prompt = inject_demos(messages, default_template(windows), placement)
            start = time.perf_counter()
            result = llm.complete(model, prompt, role="student", temperature=0.0,
                                  max_tokens=60 if generate else 1, stop=["\nObservation:"])
            reply, record = result.response, result.record
            assert reply is not None, record.error
            timing = reply._hidden_params["local_timings"][0]
            shared = prompt[:common_messages(previous, prompt)]
            previous = prompt
            block_tokens = sum(len(tokenizer.tokenize(str(m["content"]).encode(), add_bos=False))
                               for m in shared)
            action = env.expert_action or "look"
            answer = default_extractor({"content": reply.choices[0].message.content or ""})
            command = closest_admissible(answer or "", env.admissible_actions)
            rows.append({"prompt_tokens": record.prompt_tokens,
                         "cached": record.cached_tokens or 0,
                         "block_reused": min(block_tokens, record.cached_tokens or 0),
                         "completion_tokens": record.completion_tokens,
                         "cost": record.cost_usd, "uncached_cost": record.uncached_cost_usd,
                         "evaluated": timing["prompt_eval_tokens"],
                         "match": command is not None
                         and normalize_action(command) == normalize_action(action),
                         # without the agent's nearest-admissible mapping
                         "match_raw": normalize_action(answer or "") == normalize_action(action),
                         "ms": (time.perf_counter() - start) * 1000})
            observation, _, done, _ = env.step(action)
            turns.append((f"Action: {action}", observation))
            if done:
                break
    finally:
        env.close()
    return rows


def priced(rows: list[dict]) -> dict:
    """The steps' cost with and without cache credit: locally and at OpenAI's and
    Anthropic's cache prices."""
    prompt = sum(r["prompt_tokens"] for r in rows)
    out: dict = {"local": {"cost": sum(r["cost"] for r in rows),
                           "uncached_cost": sum(r["uncached_cost"] for r in rows),
                           "cached_share": sum(r["cached"] for r in rows) / prompt}}
    cached = [openai_cached(r["cached"]) for r in rows]
    out[OPENAI] = {
        "cost": sum(call_cost(OPENAI, r["prompt_tokens"], r["completion_tokens"],
                              cached_tokens=c) for r, c in zip(rows, cached, strict=True)),
        "uncached_cost": sum(call_cost(OPENAI, r["prompt_tokens"], r["completion_tokens"])
                             for r in rows),
        "cached_share": sum(cached) / prompt}
    split = [anthropic_tokens(r["prompt_tokens"], r["block_reused"]) for r in rows]
    out[ANTHROPIC] = {
        "cost": sum(call_cost(ANTHROPIC, r["prompt_tokens"], r["completion_tokens"],
                              cached_tokens=read, cache_write_tokens=write)
                    for r, (read, write) in zip(rows, split, strict=True)),
        "uncached_cost": sum(call_cost(ANTHROPIC, r["prompt_tokens"], r["completion_tokens"])
                             for r in rows),
        "cached_share": sum(read for read, _ in split) / prompt,
        "written_share": sum(write for _, write in split) / prompt}
    for figures in out.values():
        figures["cost_per_step"] = figures["cost"] / len(rows)
        figures["saving"] = 1 - figures["cost"] / figures["uncached_cost"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="local/smollm2-135m")
    parser.add_argument("--steps", type=int, default=10, help="steps replayed per game")
    parser.add_argument("--games", type=int, default=2, help="valid_seen games (stratified)")
    parser.add_argument("--demo-games", type=int, default=12)
    parser.add_argument("--generate", action="store_true",
                        help="let the model answer and score its action against the expert's")
    args = parser.parse_args()
    expert.register()
    tmp = Path(tempfile.mkdtemp())
    run_bench(BenchConfig(mode="collect", split="train", episodes=args.demo_games, stratify=True,
                          demos=str(tmp / "demos"), log=f"sqlite:///{tmp / 'log.db'}"))
    store = DemoStore.open(tmp / "demos")
    games = stratified(list_games("valid_seen"), args.games)
    results = {}
    for placement in ("system", "before_observation"):
        # Each game's first step evaluates its whole prompt whatever the layout: skip it.
        rows = [row for game in games
                for row in replay(args.model, store, placement, game, args.steps,
                                  args.generate)[1:]]
        results[placement] = {
            "steps": len(rows),
            "prompt_tokens_mean": statistics.mean(r["prompt_tokens"] for r in rows),
            "evaluated_tokens_mean": statistics.mean(r["evaluated"] for r in rows),
            "reused_share": 1 - sum(r["evaluated"] for r in rows)
            / sum(r["prompt_tokens"] for r in rows),
            "ms_median": statistics.median(r["ms"] for r in rows),
            "expert_match": (sum(r["match"] for r in rows) / len(rows)) if args.generate
            else None,
            "expert_match_unmapped": (sum(r["match_raw"] for r in rows) / len(rows))
            if args.generate else None,
            "priced": priced(rows),
        }
    close_all()
    table = Table(title=f"Demo placement vs prompt-prefix reuse ({args.model}, k=3 windows)")
    for column in ("placement", "steps", "prompt tokens", "evaluated tokens/step",
                   "reused share", "median ms/step", "matches expert (unmapped)"):
        table.add_column(column)
    for placement, r in results.items():
        match = ("-" if r["expert_match"] is None
                 else f"{r['expert_match']:.0%} ({r['expert_match_unmapped']:.0%})")
        table.add_row(placement, str(r["steps"]), f"{r['prompt_tokens_mean']:.0f}",
                      f"{r['evaluated_tokens_mean']:.0f}", f"{r['reused_share']:.0%}",
                      f"{r['ms_median']:.0f}", match)
    Console().print(table)
    costs = Table(title="The same steps billed with prompt caching (USD per step)")
    for column in ("placement", "provider", "cached share", "with cache credit",
                   "without", "saving"):
        costs.add_column(column)
    for placement, r in results.items():
        for provider, p in r["priced"].items():
            costs.add_row(placement, provider, f"{p['cached_share']:.0%}",
                          f"{p['cost_per_step']:.6f}",
                          f"{p['uncached_cost'] / r['steps']:.6f}", f"{p['saving']:.0%}")
    Console().print(costs)
    prices = {m: {"input_per_mtok": price[0] * 1e6, "output_per_mtok": price[1] * 1e6}
              for m in (OPENAI, ANTHROPIC) if (price := price_per_token(m))}
    out = Path(__file__).parent / "results" / "prompt_layout.json"
    out.write_text(json.dumps({"model": args.model, "args": vars(args), "prices": prices,
                               "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
