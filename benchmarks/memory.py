"""The measured BudgetMem run on LoCoMo with the offline local models, per tiering strategy.

For each strategy (implementation, reasoning, capacity; see `agentkd.memory.config`):

1. `agentkd memory train`: 16 training questions (LoCoMo conversations 0–7, two each, taken
   round-robin over categories 1–4 starting at a rotating category; see
   `agentkd.memory.data.select_questions`), 11 cached pipeline runs per question, then PPO
   for λ = 0.2, 1, 5 (150 iterations of 64 episodes);
2. `agentkd memory eval`, in stages of growing size (default 40, 100, 200 test questions from
   conversations 8 and 9, spread evenly over both and round-robin over categories 1–4; see
   `select_total`: each stage is a superset of the last, so it only adds rows): all-Low,
   all-Mid, all-High, random and the three routers, each with token F1 and its 95% bootstrap
   interval, cost, latency and wall time per query.

Every step resumes from the rollout cache and the eval rows (`--out`, default runs/memory), so
Ctrl-C and rerunning the same command is safe at any point; `--stages 40` stops after the
first stage and a later `--stages 40,100,200` continues from it. The last finished stage of
each strategy is written to benchmarks/results/memory_frontier.json, with
memory_frontier.png (one panel per strategy, intervals as error bars).

Models (offline, through `agentkd.local_models`): the answer call is Qwen2.5-Coder-1.5B for
every strategy (SmolLM2 answers scored near zero F1 whatever the tiers). Implementation:
Low = rules, Mid = MiniLM scoring, High = Qwen2.5-Coder-0.5B on top of Mid. Reasoning: every
tier runs Qwen2.5-Coder-0.5B (direct / chain-of-thought / plan-act-reflect). Capacity:
SmolLM2-135M / Qwen2.5-Coder-0.5B / Qwen2.5-Coder-1.5B. `AGENTKD_LOCAL_N_THREADS=1` because
on a shared 2-core machine llama.cpp's two threads spin-wait on each other and run several
times slower than one.

    python benchmarks/memory.py --time            # seconds/question per policy and projection
    python benchmarks/memory.py [--stages 40,100,200] [--strategies implementation,capacity]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

STRATEGIES = ("implementation", "reasoning", "capacity")
LAMBDAS = (0.2, 1.0, 5.0)
SMALL_MODEL = "local/qwen2.5-coder-0.5b"
ANSWER_MODEL = "local/qwen2.5-coder-1.5b"
RESULTS = Path(__file__).resolve().parent / "results"


def model_args(strategy: str) -> list[str]:
    """The strategy and the models of the measured run (the capacity models are the defaults)."""
    return ["--strategy", strategy, "--high-model", SMALL_MODEL, "--reasoning-model",
            SMALL_MODEL, "--answer-model", ANSWER_MODEL]


def train_command(out: Path, strategy: str, per_sample: int) -> list[str]:
    cmd = ["agentkd", "memory", "train", "--data", "locomo", "--per-sample", str(per_sample),
           *model_args(strategy), "--cache-dir", str(out / "memory-cache"),
           "--out", str(out / strategy / "router.pt")]
    for lam in LAMBDAS:
        cmd += ["--lambda", f"{lam:g}"]
    return cmd


def eval_command(out: Path, strategy: str, questions: int) -> list[str]:
    cmd = ["agentkd", "memory", "eval", "--questions", str(questions), *model_args(strategy),
           "--cache-dir", str(out / "memory-cache"),
           "--plot", str(out / strategy / f"frontier-{questions}.png"),
           "--save", str(stage_file(out, strategy, questions))]
    for lam in LAMBDAS:
        cmd += ["--router", str(out / strategy / f"router-lambda{lam:g}.pt")]
    return cmd


def time_command(strategy: str, questions: int, project: int) -> list[str]:
    return ["agentkd", "memory", "time", "--questions", str(questions), "--project",
            str(project), "--routers", str(len(LAMBDAS)), *model_args(strategy)]


def stage_file(out: Path, strategy: str, questions: int) -> Path:
    return out / strategy / f"frontier-{questions}.json"


def held_test_questions() -> int:
    """Questions in LoCoMo's test split (conversations 8-9, category 5 dropped): 314."""
    from agentkd.memory.data import load_dataset

    return sum(len(s.questions) for s in load_dataset("locomo", split="test"))


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def collect(out: Path, strategies: list[str], stages: list[int]) -> dict[str, object]:
    """Per strategy, the report of its largest finished stage."""
    found: dict[str, object] = {}
    for strategy in strategies:
        done = [q for q in stages if stage_file(out, strategy, q).is_file()]
        if done:
            found[strategy] = json.loads(stage_file(out, strategy, max(done)).read_text())
    return found


def write_results(reports: dict[str, object], results: Path) -> tuple[Path, Path]:
    """memory_frontier.json and memory_frontier.png (one panel per strategy) under `results`."""
    from agentkd.memory.evaluate import PolicySummary, frontier_plot

    panels: dict[str, list[PolicySummary]] = {}
    for strategy, report in reports.items():
        assert isinstance(report, dict)
        points = [PolicySummary(**{**p, "score_ci": tuple(p["score_ci"])})
                  for p in report["policies"].values()]
        panels[f"{strategy} ({report['questions']} questions)"] = points
    results.mkdir(parents=True, exist_ok=True)
    path = results / "memory_frontier.json"
    path.write_text(json.dumps(reports, indent=2))
    png = frontier_plot(panels, results / "memory_frontier.png",
                        title="BudgetMem on LoCoMo (conversations 8-9), token F1 with 95% CI")
    return path, png


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/memory"))
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--stages", default="40,100,200",
                        help="Comma-separated growing question counts (at most 314).")
    parser.add_argument("--train-per-sample", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--time", action="store_true",
                        help="Only time the baselines on --time-questions questions per "
                             "strategy and project the wall time of the last stage.")
    parser.add_argument("--time-questions", type=int, default=1)
    args = parser.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    try:
        stages = sorted({int(q) for q in args.stages.split(",") if q.strip()})
    except ValueError:
        parser.error(f"--stages must be comma-separated integers, got {args.stages!r}")
    if unknown or not strategies:
        parser.error(f"--strategies: choose from {', '.join(STRATEGIES)}")
    if not stages or stages[0] < 1:
        parser.error("--stages needs at least one question count >= 1")
    held = held_test_questions()
    if stages[-1] > held:
        parser.error(f"--stages: LoCoMo's test conversations hold {held} questions "
                     f"(category 5 aside), asked for {stages[-1]}")
    env = {**os.environ}
    env.setdefault("AGENTKD_LOCAL_N_THREADS", "1")
    env.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        if args.time:
            for strategy in strategies:
                run(time_command(strategy, args.time_questions, stages[-1]), env)
            return 0
        for strategy in strategies:
            run(train_command(args.out, strategy, args.train_per_sample), env)
        for questions in stages:
            for strategy in strategies:
                run(eval_command(args.out, strategy, questions), env)
                path, png = write_results(collect(args.out, strategies, stages), args.results)
                print(f"results: {path}, {png}", flush=True)
    except subprocess.CalledProcessError as exc:
        print(f"step failed with exit status {exc.returncode}; rerun the same command to "
              "resume", file=sys.stderr)
        return exc.returncode or 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
