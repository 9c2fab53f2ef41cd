"""Soak: 10,000 agent steps through the whole distill pipeline over loopback HTTP, flat memory.

Every step is a real `Distiller.completion` in distill mode: retrieval key, a small real demo
store (all-MiniLM-L6-v2 + faiss), one ``n=3`` student request and, when the samples disagree
(about one step in ten), a teacher request — both to an OpenAI-compatible server on 127.0.0.1
(tests/faultserver.py in normal mode, in its own process) through litellm — then the gate and a
logged step (SQLite WAL by default). The agent keeps its last 12 turns, like the reference
ReAct agent; observations come from a finite world (400 places, 60 goals), so the embedder
sees each text once and the store's embedding cache serves repeats, as in ALFWorld.

Measured: steps/s (overall and after a 10% warm-up), step latency, resident memory sampled at
every 1% (VmRSS) and the peak (VmHWM); memory is flat when RSS at 100% is within 10% of RSS at
10%. The log is then checked: one step row per step served, nothing half-written.

A short fault phase runs first (``--fault-steps``, in-process fault server): random faults
on ~40% of requests on both sides; it counts faults injected, survived (the agent got its
answer anyway) and surfaced (a TeacherError after the retry budget), and rows lost.

    python benchmarks/soak.py [--steps 10000] [--fault-steps 400] [--log URL]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import litellm  # noqa: E402
from faultserver import FAULTS, FaultServer, agent_responder  # noqa: E402
from reliability_support import (  # noqa: E402
    STUDENT,
    TEACHER,
    check_log,
    register_prices,
)
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

import agentkd  # noqa: E402
from agentkd.retrieval import DemoEpisode, DemoStep, DemoStore  # noqa: E402

PLACES, GOALS, EPISODE_STEPS, HISTORY = 400, 60, 20, 12


def proc_status(field: str) -> float:
    """A /proc/self/status memory field in MB (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def goal(i: int) -> str:
    things = ["mug", "apple", "pen", "book", "towel", "plate"]
    spots = ["desk", "shelf", "fridge", "drawer", "cabinet", "countertop", "sinkbasin"]
    return f"put a {things[i % 6]} {['in', 'on'][i % 2]} the {spots[i % 7]} {1 + i % 3}"


def observation(r: random.Random) -> str:
    p = r.randrange(PLACES)
    return (f"You arrive at place {p}. On place {p}, you see a {['mug', 'key', 'cd'][p % 3]} "
            f"{1 + p % 4} and a {['pencil', 'bowl', 'watch'][p % 3]} {1 + p % 2}.")


def build_store(folder: Path, r: random.Random) -> DemoStore:
    store = DemoStore.open(folder, create=True)
    store.add_many([DemoEpisode(goal=goal(g), task_type="pick", steps=[
        DemoStep(observation=observation(r), reasoning="Follow the plan.",
                 action=f"go to place {r.randrange(PLACES)}") for _ in range(8)])
        for g in range(30)])
    store.flush(force=True)
    return store


def start_server() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "faultserver.py"),
                             "--responder", "agent"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().split()
    assert line and line[0] == "PORT", line
    return proc, f"http://127.0.0.1:{line[1]}/v1"


def soak(steps: int, url: str, demos: DemoStore, api_base: str, r: random.Random,
         console: Console) -> dict[str, Any]:
    kw = {"api_base": api_base, "api_key": "sk-soak-0000000000000000", "timeout": 30}
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=url,
                           demos=demos, teacher_kwargs=kw, student_kwargs=kw,
                           cascade={"samples": 3, "sampling": "n"},
                           retrieval={"k": 3, "window_before": 1, "window_after": 1})
    samples: list[dict[str, float]] = []
    latencies: list[float] = []
    verdicts: dict[str, int] = {}
    done = 0
    start = time.perf_counter()
    warm_at: tuple[int, float] | None = None
    checkpoint = max(1, steps // 100)
    while done < steps:
        g = r.randrange(GOALS)
        with kd.episode_scope(task_id=f"soak-{done // EPISODE_STEPS}", goal=goal(g)) as ep:
            messages = [{"role": "system", "content": "You are an agent in a text world."},
                        {"role": "user", "content": f"Your task is to: {goal(g)}"}]
            first = list(messages)
            for _ in range(min(EPISODE_STEPS, steps - done)):
                messages.append({"role": "user", "content": observation(r)})
                t0 = time.perf_counter()
                reply = kd.completion(messages=first + messages[2:][-HISTORY:])
                latencies.append((time.perf_counter() - t0) * 1000)
                verdict = reply._hidden_params["agentkd"]["verdict"]
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
                messages.append({"role": "assistant",
                                 "content": reply.choices[0].message.content})
                done += 1
                if done % checkpoint == 0:
                    elapsed = time.perf_counter() - start
                    samples.append({"steps": done, "elapsed_s": round(elapsed, 2),
                                    "rss_mb": round(proc_status("VmRSS"), 1)})
                    if warm_at is None and done >= steps // 10:
                        warm_at = (done, elapsed)
                    if done % (checkpoint * 10) == 0:
                        console.print(f"  {done:>6,} steps  {done / elapsed:6.1f} steps/s  "
                                      f"RSS {samples[-1]['rss_mb']:.0f} MB", highlight=False)
            ep.finish(success=True)
    elapsed = time.perf_counter() - start
    kd.close()
    counts = check_log(kd.log, kd.run_id)
    latencies.sort()
    rss_10 = next(s["rss_mb"] for s in samples if s["steps"] >= steps // 10)
    rss_100 = samples[-1]["rss_mb"]
    assert warm_at is not None
    return {
        "steps": done, "elapsed_s": round(elapsed, 1), "steps_per_s": round(done / elapsed, 2),
        "steps_per_s_after_warmup": round((done - warm_at[0]) / (elapsed - warm_at[1]), 2),
        "latency_ms": {"p50": round(latencies[len(latencies) // 2], 1),
                       "p90": round(latencies[int(0.9 * len(latencies))], 1),
                       "p99": round(latencies[int(0.99 * len(latencies))], 1)},
        "verdicts": verdicts,
        "rss_mb_at_10pct": rss_10, "rss_mb_at_100pct": rss_100,
        "rss_growth_10_to_100pct": round(rss_100 / rss_10 - 1, 4),
        "peak_rss_mb": round(proc_status("VmHWM"), 1),
        "log_rows": counts, "rows_lost": done - counts["steps"],
        "rss_samples": samples,
    }


def fault_phase(steps: int, url: str, demos: DemoStore, r: random.Random) -> dict[str, Any]:
    """Random faults on both sides; counts injected, survived and surfaced, and rows lost."""
    import litellm.utils

    litellm.utils.INITIAL_RETRY_DELAY = 0.01  # keep litellm's backoff policy, shrink its base
    litellm.utils.JITTER = 0.0
    retries = 2
    teacher_faults = [f for f in FAULTS if f != "truncated_tool"]
    served = surfaced = episodes = 0
    with FaultServer(agent_responder, hang_s=1.5, retry_after=0) as srv:
        kw = {"api_base": srv.url, "api_key": "sk-soak-faults-000000000000", "timeout": 0.5}
        kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=url,
                               demos=demos, teacher_kwargs=kw, student_kwargs=kw,
                               teacher_retries=retries, cascade={"sampling": "n"},
                               retrieval={"k": 3})
        student, teacher = STUDENT.split("/", 1)[1], TEACHER.split("/", 1)[1]
        while served + surfaced < steps:
            episodes += 1
            try:
                with kd.episode_scope(task_id=f"faults-{episodes}", goal=goal(episodes)) as ep:
                    messages = [{"role": "user", "content": f"Your task is to: {goal(episodes)}"}]
                    for _ in range(10):
                        srv.clear()
                        srv.plan(student, r.choice(FAULTS) if r.random() < 0.4 else "ok")
                        if r.random() < 0.4:  # up to the whole budget: some steps surface
                            srv.plan(teacher, *r.choices(teacher_faults,
                                                         k=r.randint(1, retries + 1)))
                        messages.append({"role": "user", "content": observation(r)})
                        reply = kd.completion(messages=messages[-HISTORY:])
                        messages.append({"role": "assistant",
                                         "content": reply.choices[0].message.content})
                        served += 1
                    ep.finish(success=True)
            except agentkd.TeacherError:
                surfaced += 1
        injected = dict(srv.injected)
    total = sum(injected.values())
    counts = check_log(kd.log, kd.run_id)
    return {"steps_attempted": served + surfaced, "steps_served": served,
            "faults_injected": total, "faults_by_kind": injected,
            "faults_survived": total - (retries + 1) * surfaced,
            "surfaced_as_teacher_error": surfaced, "teacher_retries": retries,
            "rows_lost": served - counts["steps"], "log_rows": counts,
            "backoff": "litellm calculate_retry_after, base 0.01 s (shrunk for the phase)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--fault-steps", type=int, default=400)
    parser.add_argument("--log", default=None, help="SQLAlchemy URL (default: a temp SQLite)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "soak.json"))
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch intra-op threads for the embedder (0: torch's default). "
                             "One query of three short texts gains nothing from more, and on a "
                             "busy 2-core host torch's default of 2 made each encode 10x slower")
    args = parser.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    litellm.suppress_debug_info = True
    console = Console()
    register_prices()
    r = random.Random(6)
    tmp = Path(tempfile.mkdtemp(prefix="agentkd-soak-"))
    url = args.log or f"sqlite:///{tmp / 'soak.db'}"
    console.print(f"building a demo store in {tmp / 'demos'} …", highlight=False)
    demos = build_store(tmp / "demos", r)
    result: dict[str, Any] = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs), "
                                         f"Python {platform.python_version()}",
                              "log": url.split(":")[0], "demo_store_steps": len(demos),
                              "torch_threads": args.torch_threads or "default",
                              "command": " ".join(["python", "benchmarks/soak.py", *sys.argv[1:]])}
    if args.fault_steps:
        console.print(f"fault phase: {args.fault_steps} steps …", highlight=False)
        result["faults"] = fault_phase(args.fault_steps, url, demos, r)
    server, api_base = start_server()
    try:
        console.print(f"soak: {args.steps:,} steps against {api_base} …", highlight=False)
        result["soak"] = soak(args.steps, url, demos, api_base, r, console)
    finally:
        server.terminate()
        server.wait(timeout=10)

    s, f = result["soak"], result.get("faults")
    table = Table(title=f"agentkd soak: {s['steps']:,} distill steps over loopback HTTP")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("steps/s (overall)", f"{s['steps_per_s']:.1f}"),
            ("steps/s (after 10% warm-up)", f"{s['steps_per_s_after_warmup']:.1f}"),
            ("step latency p50 / p90 / p99 (ms)",
             f"{s['latency_ms']['p50']} / {s['latency_ms']['p90']} / {s['latency_ms']['p99']}"),
            ("verdicts", ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items()))),
            ("RSS at 10% / 100% (MB)", f"{s['rss_mb_at_10pct']:.0f} / {s['rss_mb_at_100pct']:.0f}"),
            ("RSS growth 10% → 100%", f"{s['rss_growth_10_to_100pct']:+.1%}"),
            ("peak RSS (MB)", f"{s['peak_rss_mb']:.0f}"),
            ("log rows (steps / calls)", f"{s['log_rows']['steps']:,} / "
                                         f"{s['log_rows']['calls']:,}"),
            ("rows lost", str(s["rows_lost"]))]
    if f:
        rows += [("fault phase: faults injected", str(f["faults_injected"])),
                 ("fault phase: survived / surfaced",
                  f"{f['faults_survived']} / {f['surfaced_as_teacher_error']} TeacherError"),
                 ("fault phase: rows lost", str(f["rows_lost"]))]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {out}", highlight=False)
    flat = s["rss_growth_10_to_100pct"] <= 0.10
    if s["rows_lost"] or (f and f["rows_lost"]) or not flat:
        sys.exit("soak failed: rows lost or memory not flat")


if __name__ == "__main__":
    main()
