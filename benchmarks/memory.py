"""The measured BudgetMem run on LoCoMo with the offline local models (issue 4's closing note).

Runs, in order (each step resumes from the rollout cache if interrupted):

1. `agentkd memory train`: 16 training questions (LoCoMo conversations 0–7, two each, taken
   round-robin over categories 1–4 starting at a rotating category; see
   `agentkd.memory.data.select_questions`), 11 cached pipeline runs per question, then PPO
   for λ = 0.2, 1, 5 (150 iterations of 64 episodes);
2. `agentkd memory eval`: 16 test questions (conversations 8 and 9, two of each category
   1–4 per conversation) for all-Low, all-Mid, all-High, random and the three routers; prints
   the table and writes the frontier PNG.

Models: SmolLM2-135M for the High-tier module calls, Qwen2.5-Coder-1.5B for the answer call
(SmolLM2 answers scored near zero F1 whatever the tiers), both through `agentkd.local_models`.
`AGENTKD_LOCAL_N_THREADS=1` because on a shared 2-core machine llama.cpp's two threads
spin-wait on each other and run several times slower than one.

    python benchmarks/memory.py [--out runs/memory] [--train-per-sample 2] [--test-per-sample 8]

On the shared 2-core machine (load average 8-12 from other work) the table took ~32 min and
the evaluation ~40 min of wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

LAMBDAS = (0.2, 1.0, 5.0)
ANSWER_MODEL = "local/qwen2.5-coder-1.5b"


def commands(out: Path, train_per_sample: int, test_per_sample: int) -> list[list[str]]:
    cache = str(out / "memory-cache")
    train = ["agentkd", "memory", "train", "--data", "locomo", "--per-sample",
             str(train_per_sample), "--answer-model", ANSWER_MODEL, "--cache-dir", cache,
             "--out", str(out / "router.pt")]
    for lam in LAMBDAS:
        train += ["--lambda", f"{lam:g}"]
    evaluate = ["agentkd", "memory", "eval", "--per-sample", str(test_per_sample),
                "--cache-dir", cache, "--plot", str(out / "frontier.png")]
    for lam in LAMBDAS:
        evaluate += ["--router", str(out / f"router-lambda{lam:g}.pt")]
    return [train, evaluate, [*evaluate, "--json"]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/memory"))
    parser.add_argument("--train-per-sample", type=int, default=2)
    parser.add_argument("--test-per-sample", type=int, default=8)
    args = parser.parse_args()
    env = {**os.environ}
    env.setdefault("AGENTKD_LOCAL_N_THREADS", "1")
    cmds = commands(args.out, args.train_per_sample, args.test_per_sample)
    for cmd in cmds[:-1]:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env=env)
    # The last eval call only re-reads the finished rows (no model calls) to save JSON.
    result = subprocess.run(cmds[-1], check=True, env=env, capture_output=True, text=True)
    start = result.stdout.index("{")
    end = result.stdout.rindex("}") + 1
    summary = json.loads(result.stdout[start:end])
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"results: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
