"""Dashboard benchmark: seed a large trajectory log, then time every dashboard page.

    python benchmarks/dashboard.py                      # 100k episodes / ~3M steps, SQLite
    python benchmarks/dashboard.py --scale 0.01         # 1k episodes, for a quick look
    python benchmarks/dashboard.py --log postgresql+psycopg://user@host/db --fresh

The seeder writes realistic rows (runs of every mode, ALFWorld task types, ~30 steps per
episode, student samples and agreement, retrieved demo ids, teacher fallbacks, memory calls)
straight through the DB-API in bulk (executemany on SQLite, COPY on PostgreSQL), because the
ORM would take an hour at this size. A seeded log is reused on the next run at the same scale.

Timed per page: the page's queries (`Dashboard.<page>()`, including the rollup's freshness
check) and the whole HTTP response (queries, filter options, template), median and max over
repeats after a warm-up. Target: under 300 ms per page at scale 1. Results go to a rich table
and to benchmarks/results/dashboard_<dialect>_scale<scale>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import delete, func, select, text

from agentkd.dashboard import Dashboard, Filters
from agentkd.dashboard.rollup import ROLLUPS
from agentkd.log import (
    Base,
    CallRecord,
    Episode,
    LLMCall,
    Run,
    Step,
    StepRecord,
    TrajectoryLog,
)

RESULTS = Path(__file__).parent / "results"
TARGET_MS = 300.0

TEACHER, STUDENT, MEMORY = "gpt-4.1", "gpt-4.1-nano", "gpt-4.1-mini"
PRICE = {TEACHER: (2.0e-6, 8.0e-6), STUDENT: (0.1e-6, 0.4e-6), MEMORY: (0.4e-6, 1.6e-6)}
TASK_TYPES = ("pick_and_place_simple", "look_at_obj_in_light", "pick_clean_then_place_in_recep",
              "pick_heat_then_place_in_recep", "pick_cool_then_place_in_recep",
              "pick_two_obj_and_place")
ACTIONS = ("go to countertop 1", "take apple 1 from countertop 1", "open fridge 1",
           "cool apple 1 with fridge 1", "go to diningtable 1", "put apple 1 in/on diningtable 1",
           "examine shelf 2", "use desklamp 1", "clean mug 1 with sinkbasin 1", "look")
# id, mode, share of episodes, success rate, first day, days, samples per step, memory calls
RUNS = (
    ("collect-gpt41", "collect", 0.05, 0.90, 0, 6, 0, False),
    ("teacher-gpt41", "teacher", 0.10, 0.89, 6, 8, 0, False),
    ("student-zeroshot", "student", 0.05, 0.18, 14, 5, 1, False),
    ("icd-k6", "icd", 0.15, 0.87, 19, 10, 1, False),
    ("distill-n3", "distill", 0.25, 0.96, 29, 12, 3, False),
    ("distill-n3-budgetmem", "distill", 0.20, 0.94, 41, 10, 3, True),
    ("distill-n5", "distill", 0.20, 0.95, 51, 9, 5, False),
)
STEP_COLS = ("id", "episode_id", "idx", "prompt_hash", "new_messages", "observation",
             "demo_ids", "demo_block", "samples", "agreement", "verdict", "actor",
             "final_action", "final_text", "cost_usd", "latency_ms", "created_at")
CALL_COLS = ("id", "run_id", "episode_id", "step_id", "role", "model", "provider", "n",
             "prompt_tokens", "completion_tokens", "cost_usd", "latency_ms", "error",
             "created_at")
EPISODE_COLS = ("id", "run_id", "task_id", "task_type", "goal", "plan", "status", "success",
                "reward", "n_steps", "teacher_steps", "cost_usd", "error", "started_at",
                "finished_at")

console = Console()


# ---- seeding --------------------------------------------------------------------------------


def _ts(moment: datetime) -> str:
    # SQLAlchemy's SQLite DateTime storage format, so the ORM reads these rows back as usual.
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def _defaults(table: str, cols: tuple[str, ...]) -> dict[str, Any]:
    """Values for the log's required columns this seeder does not know (the schema grows)."""
    out: dict[str, Any] = {}
    for column in Base.metadata.tables[table].columns:
        if column.name in cols or column.nullable or column.primary_key:
            continue
        default = column.default
        if default is None or not hasattr(default, "arg"):
            raise SystemExit(f"the seeder cannot fill {table}.{column.name}; extend it")
        value = default.arg(None) if callable(default.arg) else default.arg
        if isinstance(value, dict | list):
            value = json.dumps(value)
        elif isinstance(value, datetime):
            value = _ts(value)
        out[column.name] = value
    return out


class _Writer:
    """Bulk row writer for one connection: executemany on SQLite, COPY on PostgreSQL."""

    def __init__(self, log: TrajectoryLog) -> None:
        self.raw = log.engine.raw_connection()
        self.dialect = log.engine.dialect.name
        if self.dialect == "sqlite":
            cur = self.raw.cursor()
            cur.execute("PRAGMA synchronous=OFF")  # a benchmark log: speed over durability
            cur.close()

    def write(self, table: str, cols: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        extra = _defaults(table, cols)
        if extra:
            cols = (*cols, *extra)
            tail = tuple(extra.values())
            rows = [row + tail for row in rows]
        cur = self.raw.cursor()
        if self.dialect == "postgresql":
            with cur.copy(f"COPY {table} ({', '.join(cols)}) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row(row)
        else:
            marks = ", ".join("?" for _ in cols)
            cur.executemany(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", rows)
        cur.close()

    def commit(self) -> None:
        self.raw.commit()

    def close(self) -> None:
        self.raw.close()


def seed(log: TrajectoryLog, scale: float, *, rng_seed: int = 7, days: int = 60) -> dict[str, int]:
    """Fill an empty log with `100_000 * scale` episodes; returns row counts."""
    rng = np.random.default_rng(rng_seed)
    n_episodes = max(len(RUNS), round(100_000 * scale))
    base = datetime.combine(date.today() - timedelta(days=days), datetime.min.time())
    now = datetime.now()
    for run_id, mode, *_ in RUNS:
        log.ensure_run(run_id, mode=mode, teacher=TEACHER,
                       student=None if mode in ("teacher", "collect") else STUDENT,
                       config={"bench_scale": scale})

    # Episodes of all runs, ordered by start time so ids grow with time as in a real log.
    plan: list[tuple[float, int]] = []
    for r, (_, _, share, _, first, span, _, _) in enumerate(RUNS):
        k = max(1, round(n_episodes * share))
        starts = (first + rng.random(k) * span) * 86400.0
        plan += [(float(s), r) for s in starts]
    plan.sort()

    writer = _Writer(log)
    step_id = call_id = 0
    counts = {"episodes": 0, "steps": 0, "llm_calls": 0}
    chunk = 2000
    started = time.perf_counter()
    for lo in range(0, len(plan), chunk):
        episodes, steps, calls = [], [], []
        for i, (offset, r) in enumerate(plan[lo:lo + chunk], start=lo + 1):
            run_id, mode, _, success_rate, _, _, n_samples, memory = RUNS[r]
            task_type = TASK_TYPES[int(rng.integers(len(TASK_TYPES)))]
            length = int(rng.integers(10, 51))
            t0 = base + timedelta(seconds=offset)
            difficulty = TASK_TYPES.index(task_type) * 0.02
            unanimous = np.clip(0.97 - difficulty - 0.004 * np.arange(length), 0.05, 1.0)
            draws = rng.random(length)
            agree_draw = rng.integers(1, max(n_samples, 1), length) if n_samples > 1 else None
            lat = rng.uniform(200, 1500, length)
            ep_cost = 0.0
            t_steps = 0
            for k in range(length):
                step_id += 1
                at = _ts(t0 + timedelta(seconds=4 * k))
                action = ACTIONS[(k + i) % len(ACTIONS)]
                prompt = 700 + 60 * k + (1200 if mode in ("icd", "distill") else 0)
                step_calls = []
                agreement = None
                samples = "[]"
                if mode in ("teacher", "collect"):
                    verdict, actor = "teacher_only", "teacher"
                else:
                    n = n_samples
                    s_in, s_out = PRICE[STUDENT]
                    step_calls.append(("student", STUDENT, n, prompt, 30 * n,
                                       prompt * s_in + 30 * n * s_out))
                    if mode == "distill":
                        if draws[k] < unanimous[k]:
                            agreement, verdict, actor = 1.0, "student", "student"
                            acts = [action] * n
                        else:
                            assert agree_draw is not None
                            agreement = float(agree_draw[k]) / n
                            verdict, actor = "deferred", "teacher"
                            same = int(agree_draw[k])
                            acts = [action] * same + [ACTIONS[(k + j + 3) % len(ACTIONS)]
                                                      for j in range(n - same)]
                    elif draws[k] < 0.01:
                        verdict, actor, acts = "student_error", "teacher", []
                    else:
                        verdict, actor, acts = "student_only", "student", [action]
                    samples = "[" + ", ".join(
                        f'{{"content": "Think: next. Action: {a}", "tool_calls": null, '
                        f'"action": "{a}"}}' for a in acts) + "]"
                if actor == "teacher":
                    t_in, t_out = PRICE[TEACHER]
                    t_prompt = 1000 + 60 * k  # the agent's own prompt: no demos in it
                    step_calls.append(("collect" if mode == "collect" else "teacher", TEACHER, 1,
                                       t_prompt, 60, t_prompt * t_in + 60 * t_out))
                    t_steps += 1
                if memory:
                    m_in, m_out = PRICE[MEMORY]
                    step_calls.append(("memory", MEMORY, 1, 900, 120, 900 * m_in + 120 * m_out))
                cost = sum(c[5] for c in step_calls)
                ep_cost += cost
                demo_ids = demo_block = None
                if mode in ("icd", "distill"):
                    demo_ids = f"[{(i * 7 + k) % 9000}, {(i * 7 + k + 1) % 9000}, " \
                               f"{(i * 7 + k + 2) % 9000}]"
                    demo_block = f"Example (teacher, {task_type}): > {action}\nOK."
                steps.append((
                    step_id, i, k, f"{i:08x}{k:08x}", f'[{{"role": "user", "content": '
                    f'"You see countertop {k}."}}]', f"You see countertop {k}.",
                    demo_ids or "[]", demo_block, samples, agreement, verdict, actor, action,
                    f"Action: {action}", cost, float(lat[k]), at))
                for role, model, n, p_tok, c_tok, c_cost in step_calls:
                    call_id += 1
                    calls.append((call_id, run_id, i, step_id, role, model, "openai", n, p_tok,
                                  c_tok, c_cost, float(lat[k]) * (0.6 if role == "student" else
                                                                   0.4), None, at))
            won = bool(rng.random() < success_rate)
            finished = t0 + timedelta(seconds=4 * length)
            episodes.append((
                i, run_id, f"task-{i % 5000}", task_type, f"goal of task {i % 5000}", None,
                "success" if won else "failure", won, 1.0 if won else 0.0, length, t_steps,
                ep_cost, None, _ts(t0), _ts(min(finished, now))))
        writer.write("episodes", EPISODE_COLS, episodes)
        writer.write("steps", STEP_COLS, steps)
        writer.write("llm_calls", CALL_COLS, calls)
        writer.commit()
        counts["episodes"] += len(episodes)
        counts["steps"] += len(steps)
        counts["llm_calls"] += len(calls)
        if lo // chunk % 10 == 0:
            rate = counts["steps"] / max(time.perf_counter() - started, 1e-9)
            console.print(f"  seeded {counts['episodes']:,}/{len(plan):,} episodes, "
                          f"{counts['steps']:,} steps ({rate:,.0f} steps/s)")
    writer.close()
    with log.engine.begin() as conn:
        if log.engine.dialect.name == "postgresql":
            for table in ("episodes", "steps", "llm_calls"):  # COPY with ids skips sequences
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
        conn.execute(text("ANALYZE"))
    return counts


def log_counts(log: TrajectoryLog) -> dict[str, int]:
    with log.engine.connect() as conn:
        return {name: int(conn.scalar(select(func.count()).select_from(t)) or 0)
                for name, t in (("episodes", Episode.__table__), ("steps", Step.__table__),
                                ("llm_calls", LLMCall.__table__))}


def remove_appended(log: TrajectoryLog) -> None:
    with log.engine.begin() as conn:
        ids = list(conn.scalars(select(Episode.id).where(Episode.task_id == "bench-append")))
        conn.execute(delete(LLMCall).where(LLMCall.episode_id.in_(ids)))
        conn.execute(delete(Step).where(Step.episode_id.in_(ids)))
        conn.execute(delete(Episode).where(Episode.id.in_(ids)))


def seeded_scale(log: TrajectoryLog) -> float | None:
    with log.engine.connect() as conn:
        config = conn.scalar(select(Run.config).where(Run.id == RUNS[0][0]))
    return None if not config else config.get("bench_scale")


# ---- timing ---------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int) -> dict[str, float]:
    fn()  # warm-up: first-use costs (statement caches, page cache) are not per-page costs
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return {"median_ms": statistics.median(samples), "max_ms": max(samples),
            "min_ms": min(samples)}


def pages(dash: Dashboard) -> Iterator[tuple[str, Callable[[], Any], str]]:
    """(name, the page's data call, its URL) for every page, unfiltered and filtered."""
    runs = dash.runs()
    days = [r["day"] for r in dash.costs(Filters()).table("costs_by_day").rows]
    mid = date.fromisoformat(days[len(days) // 2]) if days else date.today()
    narrow = Filters(task_types=(TASK_TYPES[2],), date_from=mid - timedelta(days=10),
                     date_to=mid + timedelta(days=10))
    one_run = Filters(runs=(runs[-1]["id"],) if runs else ())
    with dash.engine.connect() as conn:
        # A long episode of the last run: the drill-down's worst case among normal episodes.
        episode_id = conn.scalar(select(Episode.id).order_by(Episode.n_steps.desc(),
                                                             Episode.id.desc()).limit(1))
    yield "overview", lambda: dash.overview(Filters()), "/"
    yield "overview · task type + dates", lambda: dash.overview(narrow), "/?" + narrow.query()
    yield "costs", lambda: dash.costs(Filters()), "/costs"
    yield "costs · task type + dates", lambda: dash.costs(narrow), "/costs?" + narrow.query()
    yield "cascade", lambda: dash.cascade(Filters()), "/cascade"
    yield "cascade · one run", lambda: dash.cascade(one_run), "/cascade?" + one_run.query()
    yield "models", lambda: dash.models(Filters()), "/models"
    yield "episodes (page 1)", lambda: dash.episodes(Filters()), "/episodes"
    yield ("episodes · task type + dates, page 20", lambda: dash.episodes(narrow, 20),
           "/episodes?" + narrow.query(page=20))
    yield (f"episode drill-down (#{episode_id})", lambda: dash.episode(int(episode_id or 1)),
           f"/episodes/{episode_id}")


def benchmark(url: str, scale: float, repeats: int, fresh: bool) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from agentkd.dashboard.app import create_app

    log = TrajectoryLog(url)
    remove_appended(log)  # left behind by an interrupted run
    counts = log_counts(log)
    seed_s = None
    if counts["episodes"] and (fresh or seeded_scale(log) != scale):
        raise SystemExit(f"{url} already holds a log (scale {seeded_scale(log)}); point --log at "
                         f"a new database or delete it")
    if not counts["episodes"]:
        console.print(f"seeding {url} at scale {scale} …")
        start = time.perf_counter()
        seed(log, scale)
        seed_s = time.perf_counter() - start
        counts = log_counts(log)
    console.print(f"log: {counts['episodes']:,} episodes, {counts['steps']:,} steps, "
                  f"{counts['llm_calls']:,} LLM calls"
                  + (f" (seeded in {seed_s:.0f} s)" if seed_s else ""))

    # refresh_interval_s=0: every page pays the rollup's freshness check, as the first view
    # after a quiet second would.
    dash = Dashboard(log, refresh_interval_s=0.0)
    start = time.perf_counter()
    dash.rollup.refresh()
    build_s = time.perf_counter() - start
    with dash.rollup.lock, dash.rollup.engine.connect() as conn:
        rollup_rows = {t.name: int(conn.scalar(select(func.count()).select_from(t)) or 0)
                       for t in ROLLUPS}
    console.print(f"rollup built in {build_s:.1f} s ({rollup_rows})")
    # A restart with the on-disk cache `agentkd dashboard` keeps: load, check, refresh.
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "rollup.sqlite"
        dash.rollup.cache = cache
        dash.rollup.save()
        dash.rollup.cache = None
        start = time.perf_counter()
        restarted = Dashboard(log, cache=cache)
        restarted.rollup.refresh()
        restart_s = time.perf_counter() - start
        assert restarted.rollup.loaded_from_cache
    console.print(f"restart from the rollup cache: {restart_s * 1000:.0f} ms")

    client = TestClient(create_app(dash), base_url="http://127.0.0.1")
    results = []
    for name, call, path in pages(dash):
        queries = timed(call, repeats)

        def get(path: str = path) -> None:
            response = client.get(path)
            response.raise_for_status()

        http = timed(get, repeats)
        results.append({"page": name, "path": path, "queries": queries, "http": http})

    # Freshness: a writer appends one more episode of 200 steps; the next page view folds it in.
    run_id = RUNS[-1][0]
    ep = log.start_episode(run_id, "bench-append", task_type=TASK_TYPES[0])
    for k in range(200):
        log.record_step(ep, run_id, StepRecord(idx=k, prompt_hash="x", new_messages=[],
                                               verdict="student", actor="student", agreement=1.0),
                        [CallRecord(role="student", model=STUDENT, provider="openai", n=3,
                                    prompt_tokens=100, completion_tokens=30, cost_usd=1e-5)])
    log.finish_episode(ep, status="success", success=True)
    start = time.perf_counter()
    dash.cascade(Filters())
    append_ms = (time.perf_counter() - start) * 1000
    remove_appended(log)  # leave the seeded log as it was, for the next run to reuse

    return {
        "log": url.split("@")[-1], "dialect": log.engine.dialect.name, "scale": scale,
        "counts": counts, "seed_s": seed_s, "rollup_build_s": build_s,
        "restart_from_cache_s": restart_s,
        "rollup_rows": rollup_rows, "repeats": repeats, "target_ms": TARGET_MS,
        "pages": results, "cascade_after_200_new_steps_ms": append_ms,
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(),
                    "cpus": os.cpu_count()},
        "when": datetime.now().isoformat(timespec="seconds"),
    }


def report(result: dict[str, Any]) -> Table:
    table = Table(title=f"dashboard pages · {result['dialect']} · scale {result['scale']} · "
                        f"{result['counts']['episodes']:,} episodes / "
                        f"{result['counts']['steps']:,} steps")
    for col in ("page", "queries median", "queries max", "HTTP median", "HTTP max", "≤ 300 ms"):
        table.add_column(col, justify="left" if col == "page" else "right")
    for row in result["pages"]:
        q, h = row["queries"], row["http"]
        ok = h["max_ms"] <= TARGET_MS
        table.add_row(row["page"], f"{q['median_ms']:.1f}", f"{q['max_ms']:.1f}",
                      f"{h['median_ms']:.1f}", f"{h['max_ms']:.1f}",
                      "[green]yes[/green]" if ok else "[red]no[/red]")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0,
                        help="1.0 = 100k episodes / ~3M steps (default)")
    parser.add_argument("--log", default=None,
                        help="SQLAlchemy URL (default: a SQLite file in the temp dir per scale)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--fresh", action="store_true",
                        help="refuse to reuse an existing log at --log")
    args = parser.parse_args(argv)
    url = args.log or f"sqlite:///{Path(os.environ.get('TMPDIR', '/tmp'))}/" \
                      f"agentkd-dashboard-bench-{args.scale:g}.db"
    result = benchmark(url, args.scale, args.repeats, args.fresh)
    console.print(report(result))
    console.print(f"rollup build (first start on a log): {result['rollup_build_s']:.1f} s; "
                  f"restart with its cache: {result['restart_from_cache_s']:.2f} s; "
                  f"cascade page after 200 new steps: "
                  f"{result['cascade_after_200_new_steps_ms']:.1f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"dashboard_{result['dialect']}_scale{args.scale:g}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
