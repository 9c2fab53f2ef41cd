"""Speed of the embedded llama.cpp models: prompt and generation throughput, and what the KV
cache saves when one request asks for n=3 samples.

Each measured request has a ~300-token agent-style prompt that no earlier request shares
(a fresh task line at the top), so sample 1 pays the whole prompt and samples 2..3 find it
cached. Throughputs come from llama.cpp's own counters, latencies are wall time.

    python benchmarks/local_models.py [--models qwen2.5-coder-1.5b smollm2-135m]
                                      [--repeats 3] [--max-tokens 48] [--threads 1 2]
                                      [--extra-bufts auto on off]

``--threads`` reloads each model per thread count (default: the backend's own choice, all
cores). On a busy machine fewer threads can be much faster: llama.cpp's threads wait for each
other at every layer, so one descheduled thread stalls them all.

``--extra-bufts`` reloads each model with ggml's extra buffer types on / off (the
``AGENTKD_LOCAL_EXTRA_BUFTS`` setting; ``auto``: what the probe chose on this machine). They
hold ggml's weight repacking for AVX2/AVX-512 and its AMX path, which segfaults on some AMX
CPUs; a setting that crashes this CPU is skipped (the probe says so) instead of killing the run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from rich.console import Console
from rich.table import Table

import agentkd  # noqa: F401  (registers the "local" provider)
from agentkd import llama_probe, local_models

OBSERVATION = (
    "You are in the middle of a room. Looking quickly around you, you see a bed 1, a desk 1, "
    "a desk 2, a drawer 1, a drawer 2, a drawer 3, a drawer 4, a drawer 5, a drawer 6, a "
    "garbagecan 1, a laundryhamper 1, a safe 1, a shelf 1, a shelf 2, a shelf 3, a shelf 4, "
    "and a shelf 5."
)
HISTORY = [
    ("go to desk 1", "On the desk 1, you see a alarmclock 1, a bowl 1, a cd 2, and a pen 1."),
    ("take alarmclock 1 from desk 1", "You pick up the alarmclock 1 from the desk 1."),
    ("go to desk 2", "On the desk 2, you see a desklamp 1, a keychain 2, and a mug 1."),
]


def prompt(task: int) -> list[dict[str, str]]:
    """About 300 tokens: system rules, a goal, and three ALFWorld steps."""
    system = (
        f"Task {task}. You are an agent in a household text world. At each step, think in one "
        "short sentence, then act. Reply exactly as 'Thought: <thought>' on one line and "
        "'Action: <action>' on the next. Valid actions: go to <place>, take <object> from "
        "<place>, put <object> in/on <place>, open <place>, close <place>, use <object>, "
        "examine <object>, look, inventory."
    )
    messages = [{"role": "system", "content": system},
                {"role": "user", "content": f"{OBSERVATION}\nYour task is to: examine the "
                                            f"alarmclock with the desklamp."}]
    for action, observation in HISTORY:
        messages += [{"role": "assistant", "content": f"Thought: next step.\nAction: {action}"},
                     {"role": "user", "content": observation}]
    return messages


def measure(model: str, repeats: int, max_tokens: int) -> dict[str, Any]:
    """One model under the current AGENTKD_LOCAL_N_THREADS / AGENTKD_LOCAL_EXTRA_BUFTS."""
    local_models.close_all()
    start = time.perf_counter()
    path = local_models.model_path(model)  # joins split models on the first run
    prepare_s = time.perf_counter() - start
    extra_bufts = llama_probe.choose_extra_bufts(model, path)
    start = time.perf_counter()
    local_models.get_llama(model)
    load_s = time.perf_counter() - start
    # Warm-up: the first decode pages the weights in; it is not what an agent step costs.
    litellm.completion(model=model, messages=prompt(-1), max_tokens=8, temperature=0.1)

    runs = []
    for r in range(repeats):
        response = litellm.completion(model=model, messages=prompt(r), n=3, temperature=0.1,
                                      max_tokens=max_tokens, seed=r)
        runs.append(response._hidden_params["local_timings"])

    first = [run[0] for run in runs]
    later = [t for run in runs for t in run[1:]]
    all_samples = [t for run in runs for t in run]
    eval_tokens = sum(t["eval_tokens"] for t in all_samples)
    eval_ms = sum(t["eval_ms"] for t in all_samples)
    first_ms = statistics.median(t["wall_ms"] for t in first)
    later_ms = statistics.median(t["wall_ms"] for t in later)
    return {
        "model": model,
        "extra_bufts": extra_bufts,
        "threads": local_models._n_threads(),
        "prompt_tokens": first[0]["prompt_tokens"],
        "prompt_tok_per_s": sum(t["prompt_eval_tokens"] for t in first)
        / (sum(t["prompt_eval_ms"] for t in first) / 1000),
        "gen_tok_per_s": eval_tokens / (eval_ms / 1000),
        "first_sample_ms": first_ms,
        "later_sample_ms": later_ms,
        "first_over_later": first_ms / later_ms,
        "later_prompt_eval_tokens_max": max(t["prompt_eval_tokens"] for t in later),
        "completion_tokens_mean": statistics.mean(t["completion_tokens"] for t in all_samples),
        "request_ms_median": statistics.median(sum(t["wall_ms"] for t in run) for run in runs),
        "repeats": repeats,
        "max_tokens": max_tokens,
        "prepare_s": prepare_s,
        "load_s": load_s,
    }


def _survives_extra_bufts(model: str) -> bool:
    """Forcing them on where they segfault would kill the benchmark: rehearse in a child."""
    return llama_probe.rehearse(local_models.model_path(model), True).ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(local_models.KNOWN_MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, nargs="+", default=[0],
                        help="llama.cpp threads to try; 0 = the backend default")
    parser.add_argument("--extra-bufts", nargs="+", default=["auto"],
                        choices=["auto", "on", "off"],
                        help="ggml's extra buffer types: auto (the probe's choice), on, off")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).parent / "results" / "local_models.json")
    args = parser.parse_args()

    rows = []
    for threads in args.threads:
        if threads:
            os.environ["AGENTKD_LOCAL_N_THREADS"] = str(threads)
        else:
            os.environ.pop("AGENTKD_LOCAL_N_THREADS", None)
        # Settings back to back per model: on a busy machine the load drifts between them.
        for name in args.models:
            model = f"local/{name.removeprefix('local/')}"
            for setting in args.extra_bufts:
                os.environ[llama_probe.ENV_VAR] = setting
                if setting == "on" and not _survives_extra_bufts(model):
                    print(f"skipped {model} with extra buffer types on: it crashes this CPU")
                    continue
                rows.append(measure(model, args.repeats, args.max_tokens))

    table = Table(title=f"local llama.cpp models, n=3 samples per request (n_ctx "
                        f"{local_models._n_ctx()}, load avg {os.getloadavg()[0]:.1f} on "
                        f"{os.cpu_count()} CPUs)")
    for column in ("model", "extra bufts", "threads", "prompt tok", "prompt tok/s", "gen tok/s",
                   "sample 1 ms", "samples 2-3 ms", "1st / later", "load s"):
        table.add_column(column, justify="left" if column == "model" else "right",
                         no_wrap=column == "model")
    for r in rows:
        table.add_row(r["model"].removeprefix("local/"), "on" if r["extra_bufts"] else "off",
                      str(r["threads"]),
                      str(r["prompt_tokens"]), f"{r['prompt_tok_per_s']:.0f}",
                      f"{r['gen_tok_per_s']:.1f}", f"{r['first_sample_ms']:.0f}",
                      f"{r['later_sample_ms']:.0f}", f"{r['first_over_later']:.2f}x",
                      f"{r['load_s']:.1f}")
    Console(width=max(Console().width, 130)).print(table)

    import llama_cpp

    result = {
        "benchmark": "local_models",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
                    "cpu_reports_amx": llama_probe.cpu_reports_amx(),
                    "python": platform.python_version(),
                    "llama_cpp_python": llama_cpp.__version__,
                    "n_ctx": local_models._n_ctx()},
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
