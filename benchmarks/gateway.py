"""What the gateway adds: the same chat load sent (a) straight to an upstream, (b) through
LiteLLM's own proxy, (c) through `agentkd serve` in teacher passthrough, (d) in distill mode.

The upstream is a local OpenAI-compatible server with a fixed latency (tests/gateway_upstream.py,
own process). Each setup gets the same requests from `--concurrency` clients (asyncio, one
connection pool); the table reports requests/s, client latency p50/p99 and the latency added
over (a); for (c) and (d) the log is read back: requests found once (served), lost (not in
the log) and duplicated (logged twice), and the time added beyond the LLM calls (a
request's latency at the client minus its step's calls' latency, p50/p99). Writes
benchmarks/results/gateway.json.

    python benchmarks/gateway.py --requests 2000 --concurrency 32 --latency-ms 50 \
        --litellm /path/to/venv/bin/litellm       # (b) is skipped without a litellm binary
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import httpx
from rich.console import Console
from rich.table import Table

RESULTS = ROOT / "benchmarks" / "results" / "gateway.json"
TEACHER, STUDENT = "openai/bench-teacher", "openai/bench-student"
PROXY_KEY = "sk-bench-proxy-master-0123456789"  # LiteLLM's proxy refuses to start without one


def start(command: list[str], ready: str, env: dict[str, str] | None = None,
          timeout: float = 180) -> tuple[subprocess.Popen[str], str]:
    """Start a server process; returns it and the first output line containing `ready`."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {proc.returncode} before it was ready")
        if ready in line:
            return proc, line.strip()
    proc.kill()
    raise RuntimeError(f"{' '.join(command)} was not ready after {timeout} s")


def wait_http(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.HTTPError:
            time.sleep(0.25)
    raise RuntimeError(f"nothing answers at {url}")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def load(base_url: str, model: str, requests: int, concurrency: int, tag: str,
               headers: dict[str, str] | None = None) -> dict[str, Any]:
    """`requests` chat requests from `concurrency` clients; each names itself in its text
    (``<tag>-<i>``) so the log can be checked for it."""
    latencies: dict[int, float] = {}
    errors: dict[str, int] = {}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        for i in counter:
            body = {"model": model, "messages": [
                {"role": "system", "content": "Act with 'Action: <command>'."},
                {"role": "user", "content": f"observation {tag}-{i}"}]}
            extra = {"X-Agentkd-Episode": f"{tag}-client-{k}"} if headers is not None else {}
            start = time.perf_counter()
            try:
                r = await http.post(f"{base_url}/chat/completions", json=body,
                                    headers={**(headers or {}), **extra})
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
                    continue
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                continue
            latencies[i] = (time.perf_counter() - start) * 1000

    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(k, http) for k in range(concurrency)))
        wall = time.perf_counter() - began
    values = list(latencies.values())
    return {"requests": requests, "ok": len(values), "errors": errors,
            "wall_s": round(wall, 3), "rps": round(len(values) / wall, 1),
            "p50_ms": round(percentile(values, 50), 2),
            "p99_ms": round(percentile(values, 99), 2), "latencies": latencies}


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def audit(log_url: str, tag: str, latencies: dict[int, float]) -> dict[str, Any]:
    """The served requests of `tag` found in the log once, missing, or more than once; and
    the time the gateway added beyond its LLM calls (a request's latency at the client
    minus the latency of the calls its step made), p50 and p99."""
    import re

    from sqlalchemy import func, select

    from agentkd.log import LLMCall, Step, TrajectoryLog

    mine = re.compile(rf"^observation {re.escape(tag)}-(\d+)$")
    log = TrajectoryLog(log_url, create=False)
    with log.session() as s:
        llm_ms = dict(s.execute(select(LLMCall.step_id, func.sum(LLMCall.latency_ms))
                                .group_by(LLMCall.step_id)).all())
        steps = [(int(m.group(1)), step_id) for step_id, o in
                 s.execute(select(Step.id, Step.observation))
                 if o and (m := mine.match(o.strip()))]
    log.close()
    seen: dict[int, int] = {}
    for i, _ in steps:
        seen[i] = seen.get(i, 0) + 1
    own = [latencies[i] - llm_ms.get(step_id, 0.0) for i, step_id in steps if i in latencies]
    return {"logged_once": sum(1 for i, c in seen.items() if c == 1 and i in latencies),
            "lost": sum(1 for i in latencies if i not in seen),
            "duplicated": sum(c - 1 for c in seen.values()),
            "beyond_llm_p50_ms": round(percentile(own, 50), 2) if own else None,
            "beyond_llm_p99_ms": round(percentile(own, 99), 2) if own else None}


def gateway_config(path: Path, upstream: str, mode: str, log_url: str, port: int) -> None:
    kwargs = f'{{ api_base = "{upstream}", api_key = "sk-bench-0000000000" }}'
    student = f'student = "{STUDENT}"\nstudent_kwargs = {kwargs}\n' if mode == "distill" else ""
    path.write_text(f'log = "{log_url}"\nport = {port}\nidle_timeout_s = 600\n\n[[route]]\n'
                    f'teacher = "{TEACHER}"\nmode = "{mode}"\nteacher_kwargs = {kwargs}\n'
                    f'{student}teacher_retries = 0\n'
                    f'cascade = {{ sampling = "n", logprobs = "off" }}\n')


def litellm_config(path: Path, upstream: str) -> None:
    path.write_text("model_list:\n  - model_name: bench-teacher\n    litellm_params:\n"
                    f"      model: {TEACHER}\n      api_base: {upstream}\n"
                    "      api_key: sk-bench-0000000000\n"
                    "litellm_settings:\n  drop_params: true\n  telemetry: false\n"
                    f"general_settings:\n  master_key: {PROXY_KEY}\n")


def run(args: argparse.Namespace) -> dict[str, Any]:
    console = Console(width=None if sys.stdout.isatty() else 150)  # a log file: no wrapping
    tmp = Path(tempfile.mkdtemp(prefix="agentkd-bench-gateway-"))
    procs: list[subprocess.Popen[str]] = []
    results: dict[str, Any] = {}
    try:
        up, line = start([sys.executable, str(ROOT / "tests" / "gateway_upstream.py"),
                          "--latency-ms", str(args.latency_ms)], "PORT")
        procs.append(up)
        upstream = f"http://127.0.0.1:{line.split()[1]}/v1"
        console.print(f"upstream at {upstream} ({args.latency_ms:g} ms per request)")
        warm = max(50, args.concurrency * 2)

        def measure(name: str, base: str, model: str, headers: dict[str, str] | None,
                    log_url: str | None = None) -> None:
            console.print(f"{name}: warming up, then {args.requests} requests …")
            asyncio.run(load(base, model, warm, args.concurrency, f"{name}-warm", headers))
            row = asyncio.run(load(base, model, args.requests, args.concurrency, name,
                                   headers))
            latencies = row.pop("latencies")
            if log_url is not None:
                row.update(audit(log_url, name, latencies))
            results[name] = row
            console.print(f"  {row}")

        measure("a_upstream", upstream, "bench-teacher", None)
        litellm_bin = args.litellm or shutil.which("litellm")
        if litellm_bin:
            port = free_port()
            litellm_config(tmp / "litellm.yaml", upstream)
            proc = subprocess.Popen([litellm_bin, "--config", str(tmp / "litellm.yaml"),
                                     "--port", str(port), "--num_workers", "1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "LITELLM_LOG": "ERROR"})
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{port}/health/liveliness")
            measure("b_litellm_proxy", f"http://127.0.0.1:{port}/v1", "bench-teacher",
                    {"Authorization": f"Bearer {PROXY_KEY}"})
            proc.terminate()
        else:
            console.print("(b) skipped: no litellm binary (pip install 'litellm[proxy]' in "
                          "a separate venv and pass --litellm)")
        for name, mode in (("c_agentkd_teacher", "teacher"), ("d_agentkd_distill", "distill")):
            port = free_port()
            log_url = args.log or f"sqlite:///{tmp / f'{name}.db'}"
            gateway_config(tmp / f"{name}.toml", upstream, mode, log_url, port)
            proc, _ = start([sys.executable, "-m", "agentkd.cli", "serve", "--config",
                             str(tmp / f"{name}.toml"), "--workers", str(args.workers)],
                            "agentkd gateway on")
            procs.append(proc)
            wait_http(f"http://127.0.0.1:{port}/health")
            measure(name, f"http://127.0.0.1:{port}/v1", TEACHER, {}, log_url)
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    base = results["a_upstream"]
    for row in results.values():
        row["added_p50_ms"] = round(row["p50_ms"] - base["p50_ms"], 2)
        row["added_p99_ms"] = round(row["p99_ms"] - base["p99_ms"], 2)
    proxy = results.get("b_litellm_proxy")
    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "requests": args.requests, "concurrency": args.concurrency,
              "upstream_latency_ms": args.latency_ms, "workers": args.workers,
              "log": "postgresql" if args.log and "postgres" in args.log else "sqlite",
              "cpus": os.cpu_count(), "load_avg_before": os.getloadavg()[0],
              "results": results,
              "teacher_passthrough_vs_litellm_added_p50": (
                  round(results["c_agentkd_teacher"]["added_p50_ms"] / proxy["added_p50_ms"], 2)
                  if proxy and proxy["added_p50_ms"] > 0 else None)}
    table = Table(title=f"gateway overhead: {args.requests} requests, {args.concurrency} "
                  f"clients, upstream {args.latency_ms:g} ms")
    for column in ("setup", "req/s", "p50 ms", "p99 ms", "added p50", "added p99", "errors",
                   "lost", "dup", "beyond LLM p50"):
        table.add_column(column, justify="right" if column != "setup" else "left")
    for name, row in results.items():
        table.add_row(name, f"{row['rps']:.0f}", f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}",
                      f"{row['added_p50_ms']:+.1f}", f"{row['added_p99_ms']:+.1f}",
                      str(sum(row["errors"].values())), str(row.get("lost", "-")),
                      str(row.get("duplicated", "-")), str(row.get("beyond_llm_p50_ms", "-")))
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {RESULTS.relative_to(ROOT)}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=1, help="agentkd serve workers")
    parser.add_argument("--log", help="log URL for (c)/(d) (default: a fresh SQLite file)")
    parser.add_argument("--litellm", help="the `litellm` proxy binary (default: on PATH)")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
