"""Middleware overhead per step: everything agentkd adds except the LLM calls themselves.

A litellm custom provider answers instantly in-process; each step's overhead is the wall time
of `Distiller.completion` minus the latency of the provider calls it logged. Runs on SQLite
(a real file) and, when AGENTKD_TEST_POSTGRES_URL (or --postgres) is set, on PostgreSQL.

    python benchmarks/overhead.py [--steps 500] [--postgres URL]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
from litellm import CustomLLM
from litellm.types.utils import Choices, Message, ModelResponse, Usage
from rich.console import Console
from rich.table import Table

import agentkd
from agentkd.log import LLMCall


class Instant(CustomLLM):
    """Answers at once, so the measured time is agentkd's own."""

    def completion(self, model: str, messages: list[Any], *args: Any, **kwargs: Any
                   ) -> ModelResponse:
        n = int((kwargs.get("optional_params") or {}).get("n") or 1)
        return ModelResponse(model=model, choices=[
            Choices(index=i, finish_reason="stop",
                    message=Message(role="assistant", content="Thought: ok\nAction: look"))
            for i in range(n)], usage=Usage(prompt_tokens=50, completion_tokens=8 * n,
                                            total_tokens=50 + 8 * n))


def measure(url: str, mode: str, steps: int, demos: str | None) -> list[float]:
    kd = agentkd.Distiller(teacher="instant/teacher", student="instant/student", mode=mode,
                           log=url, demos=demos, cascade={"sampling": "n"})
    overheads: list[float] = []
    with kd.episode_scope(task_id=f"bench-{mode}", goal="put a clean mug in coffeemachine"):
        messages = [{"role": "system", "content": "You are an agent."},
                    {"role": "user", "content": "Your task is to: put a clean mug in ..."}]
        for i in range(steps):
            start = time.perf_counter()
            kd.completion(messages=messages)
            wall = (time.perf_counter() - start) * 1000
            overheads.append(wall)
            messages += [{"role": "assistant", "content": "Action: look"},
                         {"role": "user", "content": f"You arrive at drawer {i}."}]
    with kd.log.session() as s:
        latencies = [c.latency_ms for c in s.query(LLMCall).filter(LLMCall.run_id == kd.run_id)
                     .order_by(LLMCall.id)]
    calls_per_step = len(latencies) // steps
    provider = [sum(latencies[i * calls_per_step:(i + 1) * calls_per_step])
                for i in range(steps)]
    return [w - p for w, p in zip(overheads, provider, strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--postgres", default=os.environ.get("AGENTKD_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    litellm.custom_provider_map = [*litellm.custom_provider_map,
                                   {"provider": "instant", "custom_handler": Instant()}]
    agentkd.register_price("instant/teacher", 3, 15)
    agentkd.register_price("instant/student", 0.1, 0.4)
    tmp = Path(tempfile.mkdtemp())
    store = agentkd.retrieval.DemoStore.open(tmp / "demos", create=True)
    store.add(agentkd.retrieval.DemoEpisode(
        goal="put a clean mug in coffeemachine",
        steps=[agentkd.retrieval.DemoStep(f"You arrive at place {i}.", f"go to place {i + 1}")
               for i in range(20)]))
    store.flush()
    backends = {"sqlite": f"sqlite:///{tmp / 'overhead.db'}"}
    if args.postgres:
        backends["postgresql"] = args.postgres
    cases = [("teacher", None), ("distill", str(tmp / "empty")), ("distill", str(tmp / "demos"))]
    agentkd.retrieval.DemoStore.open(tmp / "empty", create=True).close()
    rows = []
    for backend, url in backends.items():
        for mode, demos in cases:
            label = f"{mode}" + (" + retrieval" if demos and demos.endswith("/demos") else "")
            measure(url, mode, 20, demos)  # warm-up: model load, table creation
            values = sorted(measure(url, mode, args.steps, demos))
            rows.append({"backend": backend, "case": label, "steps": args.steps,
                         "median_ms": statistics.median(values),
                         "p90_ms": values[int(0.9 * len(values))],
                         "p99_ms": values[int(0.99 * len(values))]})
    table = Table(title="agentkd middleware overhead per step (LLM time excluded)")
    for column in ("backend", "case", "steps", "median ms", "p90 ms", "p99 ms"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["backend"], r["case"], str(r["steps"]), f"{r['median_ms']:.2f}",
                      f"{r['p90_ms']:.2f}", f"{r['p99_ms']:.2f}")
    Console().print(table)
    out = Path(__file__).parent / "results" / "overhead.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
