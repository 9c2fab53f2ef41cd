"""Dashboard tests: SQL aggregates on a seeded log, the web app, the HTML report, and (marked
`browser`) Playwright driving Debian's chromium against a live server on 127.0.0.1.

Expected numbers are computed here with plain SQL over the log's tables, independently of the
dashboard's own queries and rollup. Browser screenshots go to $AGENTKD_ARTIFACTS (default
artifacts/screenshots); the folder is printed at the end of the session.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import importable, postgres_schema, require
from sqlalchemy import case, text, update

from agentkd.dashboard import Dashboard, Filters
from agentkd.dashboard.html import fmt
from agentkd.dashboard.rollup import UNANIMOUS
from agentkd.errors import ConfigError
from agentkd.log import CallRecord, Episode, LLMCall, Step, StepRecord, TrajectoryLog
from agentkd.report import run_summaries

require(importable("fastapi") and importable("jinja2"),
        "the dashboard tests need fastapi and jinja2: pip install 'agentkd[dashboard]'")

T, S, M = "scripted/teacher", "scripted/student", "scripted/memory"
DAYS = ("2026-01-10", "2026-01-11", "2026-01-12")
AGREEMENTS = (1.0, 1.0, 2 / 3, 1 / 3)


@dataclass
class Seeded:
    url: str
    log: TrajectoryLog

    def sql(self, query: str, **params: Any) -> list[Any]:
        with self.log.engine.connect() as conn:
            return list(conn.execute(text(query), params))


def _write_episode(log: TrajectoryLog, run: str, mode: str, e: int, length: int) -> int:
    task_type = ("pick", "clean", None)[e % 3]
    ep = log.start_episode(run, f"task-{e}", task_type=task_type, goal=f"goal {e}")
    for k in range(length):
        prompt = 100 + 10 * k
        samples: list[dict[str, Any]] = []
        agreement = None
        demo_ids: list[int] = []
        block = None
        if mode in ("teacher", "collect"):
            verdict, actor = "teacher_only", "teacher"
            calls = [CallRecord(role=mode, model=T, provider="scripted", prompt_tokens=prompt,
                                completion_tokens=10, cost_usd=0.01 + 0.001 * k,
                                latency_ms=200.0)]
        else:
            n = 3 if mode == "distill" else 1
            calls = [CallRecord(role="student", model=S, provider="scripted", n=n,
                                prompt_tokens=prompt + 50, completion_tokens=5 * n,
                                cost_usd=0.001 * n, latency_ms=80.0)]
            demo_ids, block = [k, k + 1, k + 2], f"> demo action {k}\nOK."
            if mode == "distill":
                agreement = AGREEMENTS[(e + k) % len(AGREEMENTS)]
                agreeing = round(agreement * 3)
                actions = ["go to shelf 1"] * agreeing + [f"open drawer {j}"
                                                          for j in range(3 - agreeing)]
                verdict, actor = ("student", "student") if agreement == 1.0 else \
                    ("deferred", "teacher")
            else:
                actions = ["go to shelf 1"]
                verdict, actor = "student_only", "student"
            samples = [{"content": f"Think. Action: {a}", "tool_calls": None, "action": a}
                       for a in actions]
            if actor == "teacher":
                calls.append(CallRecord(role="teacher", model=T, provider="scripted",
                                        prompt_tokens=prompt, completion_tokens=10,
                                        cost_usd=0.01, latency_ms=300.0))
        log.record_step(ep, run, StepRecord(
            idx=k, prompt_hash=f"{e}-{k}", new_messages=[{"role": "user", "content": "obs"}],
            verdict=verdict, actor=actor, observation=f"You see shelf {k}.", demo_ids=demo_ids,
            demo_block=block, samples=samples, agreement=agreement,
            final_action="go to shelf 1", final_text="Action: go to shelf 1", latency_ms=150.0,
        ), calls)
    if mode == "distill" and e % 4 == 0:
        log.record_calls(run, ep, [CallRecord(role="memory", model=M, provider="scripted",
                                              prompt_tokens=300, completion_tokens=40,
                                              cost_usd=0.002, latency_ms=50.0)])
    log.finish_episode(ep, status="success" if e % 5 else "failure", success=bool(e % 5))
    return ep


def seed_log(url: str) -> TrajectoryLog:
    """A small log of four runs over three days, written through TrajectoryLog."""
    log = TrajectoryLog(url)
    runs = (("collect-1", "collect", 4), ("teacher-1", "teacher", 6),
            ("distill-1", "distill", 12), ("icd-1", "icd", 6))
    for run, mode, _ in runs:
        log.ensure_run(run, mode=mode, teacher=T,
                       student=None if mode in ("teacher", "collect") else S)
    for run, mode, count in runs:
        for e in range(count):
            _write_episode(log, run, mode, e, 3 + e % 5)
    # A failed teacher call outside any step, and an episode still running.
    running = log.start_episode("distill-1", "task-running", task_type="pick")
    log.record_calls("distill-1", running, [CallRecord(role="teacher", model=T, provider="x",
                                                      error="RateLimitError: slow down")])
    # Spread the log over three days, deterministically, by episode id.
    noon = [datetime.fromisoformat(f"{day} 12:00:00") for day in DAYS]
    with log.engine.begin() as conn:
        tables: list[tuple[Any, str, str]] = [(Episode.__table__, "started_at", "id"),
                                              (Step.__table__, "created_at", "episode_id"),
                                              (LLMCall.__table__, "created_at", "episode_id")]
        for table, col, key in tables:
            k = table.c[key]
            conn.execute(update(table).values({col: case((k % 3 == 0, noon[0]),
                                                         (k % 3 == 1, noon[1]), else_=noon[2])}))
    return log


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'log.db'}"
    return Seeded(url, seed_log(url))


@pytest.fixture(scope="module")
def dash(seeded: Seeded) -> Dashboard:
    return Dashboard(seeded.url, refresh_interval_s=0.0)


# ---- expected values, straight from SQL --------------------------------------------------

def expected_costs_by_day(s: Seeded) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for day, role, cost in s.sql("SELECT date(created_at), role, sum(cost_usd) FROM llm_calls "
                                 "GROUP BY 1, 2"):
        bucket = "teacher" if role in ("teacher", "collect") else role
        out.setdefault(day, {}).setdefault(bucket, 0.0)
        out[day][bucket] += cost
    return out


def expected_histogram(s: Seeded) -> dict[int, tuple[int, int]]:
    rows = s.sql("SELECT agreement, count(*), sum(actor = 'teacher') FROM steps "
                 "WHERE agreement IS NOT NULL GROUP BY agreement")
    out: dict[int, tuple[int, int]] = {}
    for agreement, n, teacher in rows:
        bucket = UNANIMOUS if agreement >= 1.0 else int(agreement * 10 + 1e-9)
        out[bucket] = (n, teacher)
    return out


def expected_models(s: Seeded) -> dict[str, tuple[int, int, float]]:
    return {m: (calls, tokens, spend) for m, calls, tokens, spend in s.sql(
        "SELECT model, count(*), sum(prompt_tokens + completion_tokens), sum(cost_usd) "
        "FROM llm_calls GROUP BY model")}


def expected_runs(s: Seeded) -> dict[str, dict[str, Any]]:
    rows = s.sql("SELECT run_id, count(*), sum(success), sum(cost_usd), sum(n_steps), "
                 "sum(teacher_steps) FROM episodes WHERE status IN ('success', 'failure', "
                 "'done', 'error') GROUP BY run_id")
    totals = dict(s.sql("SELECT run_id, sum(cost_usd) FROM episodes GROUP BY run_id"))
    return {run: {"episodes": n, "success_rate": wins / n, "cost_per_episode": cost / n,
                  "teacher_call_rate": t / steps, "total_cost": totals[run]}
            for run, n, wins, cost, steps, t in rows}


# ---- aggregates --------------------------------------------------------------------------

def test_overview_is_run_summaries(seeded: Seeded, dash: Dashboard) -> None:
    expected = [s.model_dump() for s in run_summaries(seeded.log)]
    assert dash.overview(Filters()).table("runs").rows == expected
    by_run = {r["run_id"]: r for r in expected}
    for run, values in expected_runs(seeded).items():
        for key, value in values.items():
            assert by_run[run][key] == pytest.approx(value), (run, key)
    # The saving against the teacher on the tasks both finished, straight from SQL.
    finished = "status IN ('success', 'failure')"
    ((teacher_cpe,),) = seeded.sql(
        f"SELECT avg(cost_usd) FROM episodes WHERE run_id = 'teacher-1' AND {finished} AND "
        f"task_id IN (SELECT task_id FROM episodes WHERE run_id = 'distill-1' AND {finished})")
    ((run_cpe,),) = seeded.sql(
        f"SELECT avg(cost_usd) FROM episodes WHERE run_id = 'distill-1' AND {finished} AND "
        f"task_id IN (SELECT task_id FROM episodes WHERE run_id = 'teacher-1' AND {finished})")
    ((collection,),) = seeded.sql("SELECT sum(cost_usd) FROM episodes WHERE run_id = 'collect-1'")
    assert by_run["distill-1"]["relative_cost"] == pytest.approx(run_cpe / teacher_cpe)
    assert by_run["distill-1"]["break_even_episodes"] == pytest.approx(
        collection / (teacher_cpe - run_cpe))


def test_overview_filters(seeded: Seeded, dash: Dashboard) -> None:
    rows = dash.overview(Filters(modes=("distill",))).table("runs").rows
    assert [r["run_id"] for r in rows] == ["distill-1"]
    rows = dash.overview(Filters(task_types=("pick",), date_from=None)).table("runs").rows
    (n, cost), = seeded.sql("SELECT count(*), sum(cost_usd) FROM episodes WHERE run_id = "
                            "'distill-1' AND task_type = 'pick' AND status != 'running'")
    distill = next(r for r in rows if r["run_id"] == "distill-1")
    assert distill["episodes"] == n
    assert distill["cost_per_episode"] == pytest.approx(cost / n)
    # The teacher baseline is the teacher run's episodes of the slice, on the tasks distill
    # also played there; distill is compared on those tasks only.
    shared = ("SELECT task_id FROM episodes WHERE run_id = 'teacher-1' AND task_type = 'pick'")
    (s_n, s_cost), = seeded.sql("SELECT count(*), sum(cost_usd) FROM episodes WHERE run_id = "
                                "'distill-1' AND status != 'running' AND task_id IN "
                                f"({shared})")
    (t_n, t_cost), = seeded.sql("SELECT count(*), sum(cost_usd) FROM episodes WHERE run_id = "
                                "'teacher-1' AND task_type = 'pick'")
    assert (distill["compared_episodes"], distill["baseline_episodes"]) == (s_n, t_n) == (2, 2)
    assert distill["relative_cost"] == pytest.approx((s_cost / s_n) / (t_cost / t_n))
    assert distill["relative_cost"] != pytest.approx(
        next(r for r in dash.overview(Filters()).table("runs").rows
             if r["run_id"] == "distill-1")["relative_cost"])
    one_day = Filters(date_from=date(2026, 1, 11),
                      date_to=date(2026, 1, 11))
    (n_day,), = seeded.sql("SELECT count(*) FROM episodes WHERE date(started_at) = '2026-01-11' "
                           "AND status != 'running'")
    assert sum(r["episodes"] for r in dash.overview(one_day).table("runs").rows) == n_day


def test_costs_by_day_and_run(seeded: Seeded, dash: Dashboard) -> None:
    page = dash.costs(Filters())
    expected = expected_costs_by_day(seeded)
    rows = {r["day"]: r for r in page.table("costs_by_day").rows}
    assert set(rows) == set(DAYS) == set(expected)
    for day, split in expected.items():
        for who in ("teacher", "student", "memory"):
            assert rows[day][f"{who}_usd"] == pytest.approx(split.get(who, 0.0)), (day, who)
    by_run = dict(seeded.sql("SELECT run_id, sum(cost_usd) FROM llm_calls GROUP BY run_id"))
    for row in page.table("costs_by_run").rows:
        assert row["total_usd"] == pytest.approx(by_run[row["run_id"]])
    filtered = dash.costs(Filters(task_types=("clean",), runs=("distill-1",)))
    (want,), = seeded.sql("SELECT sum(c.cost_usd) FROM llm_calls c JOIN episodes e ON "
                          "e.id = c.episode_id WHERE e.task_type = 'clean' AND "
                          "c.run_id = 'distill-1'")
    assert sum(r["total_usd"] for r in filtered.table("costs_by_day").rows) == pytest.approx(want)


def test_cascade_aggregates(seeded: Seeded, dash: Dashboard) -> None:
    page = dash.cascade(Filters())
    hist = {r["bucket"]: (r["steps"], r["teacher_steps"]) for r in page.table("agreement").rows}
    assert hist == expected_histogram(seeded)
    assert set(hist) == {3, 6, UNANIMOUS}
    by_task = {r["task_type"]: r for r in page.table("teacher_rate_by_task").rows}
    for task_type, steps, teacher in seeded.sql(
            "SELECT coalesce(e.task_type, '(none)'), count(*), sum(s.actor = 'teacher') "
            "FROM steps s JOIN episodes e ON e.id = s.episode_id JOIN runs r ON r.id = e.run_id "
            "WHERE r.mode IN ('student', 'icd', 'distill') GROUP BY 1"):
        assert by_task[task_type]["steps"] == steps
        assert by_task[task_type]["teacher_call_rate"] == pytest.approx(teacher / steps)
    by_idx = {r["idx"]: r for r in page.table("teacher_rate_by_step").rows}
    for idx, steps, teacher in seeded.sql(
            "SELECT s.idx, count(*), sum(s.actor = 'teacher') FROM steps s JOIN episodes e ON "
            "e.id = s.episode_id WHERE e.run_id IN ('distill-1', 'icd-1') GROUP BY s.idx"):
        assert (by_idx[idx]["steps"], by_idx[idx]["teacher_steps"]) == (steps, teacher)
    assert page.extra["labels"] is None
    assert any("no teacher labels" in note for note in page.notes)
    teacher_only = dash.cascade(Filters(modes=("teacher",)))
    assert teacher_only.table("teacher_rate_by_task").rows[0]["teacher_call_rate"] == 1.0


def test_models(seeded: Seeded, dash: Dashboard) -> None:
    rows = {r["model"]: r for r in dash.models(Filters()).table("models").rows}
    for model, (calls, tokens, spend) in expected_models(seeded).items():
        assert (rows[model]["calls"], rows[model]["tokens"]) == (calls, tokens)
        assert rows[model]["spend"] == pytest.approx(spend)
    assert rows[T]["errors"] == 1
    assert rows[T]["roles"] == "collect, teacher"
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1.0)


def test_episodes_and_drilldown(seeded: Seeded, dash: Dashboard) -> None:
    page = dash.episodes(Filters(runs=("distill-1",)), per_page=5)
    (n,), = seeded.sql("SELECT count(*) FROM episodes WHERE run_id = 'distill-1'")
    assert page.extra["total"] == n and page.extra["pages"] == -(-n // 5)
    assert len(page.table("episodes").rows) == 5
    assert len(list(dash.iter_episodes(Filters(runs=("distill-1",)), batch=4))) == n
    ep_id = page.table("episodes").rows[-1]["id"]
    detail = dash.episode(ep_id)
    assert detail is not None
    steps = detail.extra["steps"]
    assert [s["idx"] for s in steps] == [s.idx for s in seeded.log.steps(ep_id)]
    first = steps[0]
    assert first["samples"] and first["samples"][0]["action"] == "go to shelf 1"
    assert first["demo_ids"] == [0, 1, 2] and first["demo_block"].startswith("> demo")
    step_cost = sum(c.cost_usd for c in seeded.log.calls(ep_id) if c.step_id == first["id"])
    assert first["cost_usd"] == pytest.approx(step_cost)
    assert dash.episode(10**9) is None


def test_label_accuracy_when_the_log_has_labels(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    log = TrajectoryLog(url)
    log.ensure_run("d", mode="distill", teacher=T, student=S)
    _write_episode(log, "d", "distill", 0, 8)
    with log.engine.begin() as conn:
        conn.execute(text("ALTER TABLE steps ADD COLUMN teacher_label TEXT"))
        conn.execute(text("UPDATE steps SET teacher_label = CASE WHEN idx % 2 = 0 "
                          "THEN final_action ELSE 'look' END WHERE idx < 6"))
    page = Dashboard(url).cascade(Filters())
    table = page.extra["labels"]
    (labelled, agree), = Seeded(url, log).sql(
        "SELECT count(*), sum(final_action = teacher_label) FROM steps "
        "WHERE actor = 'student' AND teacher_label IS NOT NULL")
    assert table.rows == [{"run_id": "d", "labelled": labelled, "agree": agree,
                           "accuracy": pytest.approx(agree / labelled)}]


@pytest.mark.parametrize("lag_s", [None, 3600.0])
def test_rollup_stays_live(tmp_path: Path, lag_s: float | None) -> None:
    """New rows show up on the next refresh, once, whether folded in or read as tail."""
    url = f"sqlite:///{tmp_path / 'live.db'}"
    log = TrajectoryLog(url)
    log.ensure_run("d", mode="distill", teacher=T, student=S)
    _write_episode(log, "d", "distill", 1, 4)
    dash = Dashboard(url, refresh_interval_s=0.0, lag_s=lag_s)

    def total_steps() -> int:
        return sum(r["steps"] for r in dash.cascade(Filters()).table("teacher_rate_by_step").rows)

    def spend() -> float:
        return sum(r["total_usd"] for r in dash.costs(Filters()).table("costs_by_run").rows)

    assert total_steps() == 4
    _write_episode(log, "d", "distill", 2, 5)
    assert total_steps() == 9
    assert total_steps() == 9  # refreshing again must not count anything twice
    assert spend() == pytest.approx(seeded_spend(log))
    dash.rollup.rebuild()
    assert total_steps() == 9


def test_rollup_cache_survives_restarts_and_notices_another_log(tmp_path: Path) -> None:
    db, cache = tmp_path / "log.db", tmp_path / "cache" / "rollup.sqlite"
    url = f"sqlite:///{db}"
    log = TrajectoryLog(url)
    log.ensure_run("d", mode="distill", teacher=T, student=S)
    _write_episode(log, "d", "distill", 1, 4)

    def total_steps(d: Dashboard) -> int:
        return sum(r["steps"] for r in d.cascade(Filters()).table("teacher_rate_by_step").rows)

    first = Dashboard(url, refresh_interval_s=0.0, cache=cache)
    assert not first.rollup.loaded_from_cache and total_steps(first) == 4
    first.rollup.save()
    _write_episode(log, "d", "distill", 2, 5)
    second = Dashboard(url, refresh_interval_s=0.0, cache=cache)
    assert second.rollup.loaded_from_cache and second.rollup.marks == first.rollup.marks
    assert total_steps(second) == 9  # only the new episode was read, nothing counted twice
    assert sum(r["total_usd"] for r in second.costs(Filters()).table("costs_by_run").rows) \
        == pytest.approx(seeded_spend(log))
    second.rollup.save()

    log.close()
    for path in tmp_path.glob("log.db*"):
        path.unlink()
    other = TrajectoryLog(url)  # a different, smaller log at the same path
    other.ensure_run("d", mode="distill", teacher=T, student=S)
    _write_episode(other, "d", "distill", 3, 6)
    third = Dashboard(url, refresh_interval_s=0.0, cache=cache)
    assert not third.rollup.loaded_from_cache and total_steps(third) == 6

    cache.write_bytes(b"not a database")
    fourth = Dashboard(url, refresh_interval_s=0.0, cache=cache)
    assert not fourth.rollup.loaded_from_cache and total_steps(fourth) == 6


def seeded_spend(log: TrajectoryLog) -> float:
    with log.engine.connect() as conn:
        return float(conn.scalar(text("SELECT sum(cost_usd) FROM llm_calls")) or 0.0)


def test_filters_roundtrip() -> None:
    from starlette.datastructures import QueryParams

    f = Filters(runs=("a", "b c"), modes=("distill",), task_types=("",),
                date_from=date(2026, 1, 2))
    assert Filters.parse(QueryParams(f.query())) == f
    with pytest.raises(ConfigError, match="YYYY-MM-DD"):
        Filters.parse(QueryParams("from=yesterday"))


def test_fmt() -> None:
    assert fmt(None, "usd") == "–"
    assert fmt(0.0123456, "usd") == "$0.0123"
    assert fmt(12345.678, "usd") == "$12,345.68"
    assert fmt(0.25, "pct") == "25.0%"
    assert fmt(0.4212, "ratio") == "0.42×"
    assert fmt(842.6, "int") == "843"


# ---- PostgreSQL ---------------------------------------------------------------------

@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test server, so this test shares no tables with others."""
    with postgres_schema("dash") as url:
        yield url


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.postgres
@pytest.mark.parametrize("lag_s", [None, 1e9])  # 1e9 s: every row is still "recent" tail
def test_postgres_log_gives_the_same_pages(pg_url: str, seeded: Seeded,
                                           lag_s: float | None) -> None:
    """The same rows in PostgreSQL and in SQLite give the same numbers on every page."""
    seed_log(pg_url)
    pg = Dashboard(pg_url, refresh_interval_s=0.0, lag_s=lag_s)
    lite = Dashboard(seeded.url, refresh_interval_s=0.0)
    narrow = Filters(task_types=("pick", ""), date_from=date(2026, 1, 11))
    for f in (Filters(), narrow, Filters(modes=("distill",))):
        for name in ("overview", "costs", "cascade", "models"):
            mine, theirs = getattr(pg, name)(f), getattr(lite, name)(f)
            for table in theirs.tables:
                assert _same(mine.table(table.name).rows, table.rows), (name, table.name, f)
        assert pg.episodes(f).extra["total"] == lite.episodes(f).extra["total"]
    detail = pg.episode(pg.episodes(Filters(runs=("distill-1",))).table("episodes").rows[-1]["id"])
    assert detail is not None and detail.extra["steps"][0]["samples"][0]["action"]


# ---- the web app ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(dash: Dashboard) -> Any:
    from fastapi.testclient import TestClient

    from agentkd.dashboard.app import create_app

    return TestClient(create_app(dash), base_url="http://127.0.0.1")


@pytest.mark.parametrize("path", ["/", "/costs", "/cascade", "/models", "/episodes",
                                  "/episodes?run=distill-1&page=2",
                                  "/?task_type=pick&from=2026-01-10&to=2026-01-11",
                                  "/costs?mode=distill", "/cascade?task_type="])
def test_pages_render(client: Any, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200, response.text
    assert 'src="/static/plotly.min.js"' in response.text
    assert "http://" not in response.text.replace('xmlns="http://', "")
    assert "https://" not in response.text


def test_static_and_errors(client: Any, seeded: Seeded) -> None:
    js = client.get("/static/plotly.min.js")
    assert js.status_code == 200 and "plotly" in js.text[:2000].lower()
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/episodes/999999").status_code == 404
    assert client.get("/?from=soon").status_code == 400
    (ep,), = seeded.sql("SELECT min(id) FROM episodes")
    assert "step 0" in client.get(f"/episodes/{ep}").text


def test_csv_downloads(client: Any, seeded: Seeded, dash: Dashboard) -> None:
    response = client.get("/costs?format=csv&table=costs_by_day")
    assert response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    expected = expected_costs_by_day(seeded)
    assert {r["day"] for r in rows} == set(expected)
    for r in rows:
        assert float(r["teacher_usd"]) == pytest.approx(expected[r["day"]]["teacher"])
    episodes = list(csv.DictReader(io.StringIO(
        client.get("/episodes?format=csv&table=episodes&run=icd-1").text)))
    assert len(episodes) == 6 and {e["run_id"] for e in episodes} == {"icd-1"}
    (ep,), = seeded.sql("SELECT min(id) FROM episodes WHERE run_id = 'distill-1'")
    steps = list(csv.DictReader(io.StringIO(
        client.get(f"/episodes/{ep}?format=csv&table=episode_steps").text)))
    assert [int(s["idx"]) for s in steps] == list(range(len(steps)))
    assert client.get("/models?format=csv&table=nope").status_code == 404
    for path, table in (("/", "runs"), ("/cascade", "agreement"), ("/models", "models")):
        assert client.get(f"{path}?format=csv&table={table}").status_code == 200


def test_access_control(dash: Dashboard) -> None:
    from fastapi.testclient import TestClient

    from agentkd.dashboard.app import create_app

    with pytest.raises(ConfigError, match="token"):
        create_app(dash, host="0.0.0.0")
    app = create_app(dash, host="0.0.0.0", token="s3cret-token")
    c = TestClient(app, base_url="http://10.1.2.3", follow_redirects=False)
    assert c.get("/").status_code == 401
    assert c.get("/healthz").status_code == 200
    assert c.get("/", headers={"authorization": "Bearer s3cret-token"}).status_code == 200
    assert c.get("/?token=wrong").status_code == 401
    hop = c.get("/costs?mode=distill&token=s3cret-token")
    assert hop.status_code == 303 and hop.headers["location"] == "/costs?mode=distill"
    assert c.get("/costs?mode=distill").status_code == 200  # the cookie now carries it
    local = TestClient(create_app(dash), base_url="http://evil.example")
    assert local.get("/").status_code == 400  # DNS rebinding: a foreign Host on loopback
    assert TestClient(create_app(dash), base_url="http://localhost:8765").get("/").is_success


def _external_refs(html: str) -> list[str]:
    """src/href attributes of real tags (script bodies are not parsed) that leave the file."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Refs(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.extend(f"{tag} {v}" for k, v in attrs if k in ("src", "href") and v
                         and not v.startswith(("data:", "#")))

    Refs().feed(html)
    return found


def test_html_report(seeded: Seeded, tmp_path: Path) -> None:
    from agentkd.dashboard import write_report

    out = write_report(seeded.url, str(tmp_path / "report.html"))
    html = Path(out).read_text()
    assert _external_refs(html) == []
    assert 'id="table-runs"' in html and "distill-1" in html
    assert "Plotly" in html and len(html) > 1_000_000  # the chart library is inline
    only = Path(write_report(seeded.url, str(tmp_path / "one.html"), ["icd-1"])).read_text()
    assert "icd-1" in only and ">distill-1<" not in only


def test_cli_report_html_and_dashboard(seeded: Seeded, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from agentkd.cli import app
    from agentkd.dashboard import app as dashboard_app

    out = tmp_path / "r.html"
    result = CliRunner().invoke(app, ["report", "--log", seeded.url, "--html", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_text().count('data-col="run_id"') == 4
    result = CliRunner().invoke(app, ["dashboard", "--help"])
    assert result.exit_code == 0 and "--token" in result.output
    served: dict[str, Any] = {}

    def fake_serve(log: str, **kwargs: Any) -> None:
        served.update(kwargs, log=log)
        kwargs["on_ready"](f"http://{kwargs['host']}:{kwargs['port']}/?token={kwargs['token']}")

    monkeypatch.setattr(dashboard_app, "serve", fake_serve)
    result = CliRunner().invoke(app, ["dashboard", "--log", seeded.url, "--host", "0.0.0.0",
                                      "--port", "9999"])
    assert result.exit_code == 0, result.output
    assert served["token"] and f"token={served['token']}" in result.output
    result = CliRunner().invoke(app, ["dashboard", "--log", seeded.url])
    assert result.exit_code == 0 and served["token"] is None and served["port"] == 8765
    monkeypatch.undo()  # the real server: it must refuse a log that does not exist
    result = CliRunner().invoke(app, ["dashboard", "--log", f"sqlite:///{tmp_path}/none.db"])
    assert result.exit_code == 2 and "no agentkd log at" in result.output


# ---- the browser -----------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(seeded: Seeded) -> Iterator[str]:
    import uvicorn

    from agentkd.dashboard.app import create_app

    port = _free_port()
    app = create_app(seeded.url, refresh_interval_s=0.0)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert time.monotonic() < deadline, "dashboard server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def shots(request: pytest.FixtureRequest) -> Iterator[Path]:
    folder = Path(os.environ.get("AGENTKD_ARTIFACTS", "artifacts/screenshots")).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    yield folder
    # Printed past pytest's output capture, so CI logs name the folder to collect.
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\ndashboard screenshots: {folder}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(importable("playwright.sync_api"),
            "the browser tests need playwright: pip install 'agentkd[dev]'")
    require(shutil.which(CHROMIUM), f"{CHROMIUM} missing (apt-get install chromium)")
    from playwright import sync_api

    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Tab:
    """A page that records console errors and every URL it requested."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.context = browser.new_context(viewport={"width": 1400, "height": 900},
                                           accept_downloads=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("request", lambda r: self.requests.append(r.url))

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def open(self, path: str) -> Any:
        self.page.goto(self.base + path)
        self.settle()
        return self.page

    def settle(self) -> None:
        self.page.wait_for_load_state("networkidle")
        charts = int(self.page.get_attribute("body", "data-charts") or 0)
        if charts:
            self.page.wait_for_function(
                "n => document.querySelectorAll('.chart[data-rendered]').length === n", arg=charts)

    def cell(self, table: str, key_col: str, key: str, col: str) -> tuple[str, str]:
        row = self.page.locator(f"#table-{table} tbody tr").filter(
            has=self.page.locator(f'td[data-col="{key_col}"][data-value="{key}"]'))
        td = row.locator(f'td[data-col="{col}"]')
        return td.inner_text().strip(), td.get_attribute("data-value") or ""

    def charts(self) -> dict[str, dict[str, Any]]:
        """What Plotly drew for each chart on the page: its marks of data with a visible
        size (bars, markers, lines), text labels, legend entries and axis ranges."""
        return {c["name"]: c for c in self.page.evaluate(CHART_PROBE)}

    def check_charts_drawn(self) -> dict[str, dict[str, Any]]:
        """Every chart on the page shows data: at least one visible bar, marker or line."""
        charts = self.charts()
        assert charts, "no charts on the page"
        for name, chart in charts.items():
            assert chart["marks"] > 0, f"chart {name!r} draws nothing: {chart}"
        return charts

    def check_clean(self) -> None:
        assert not self.errors, self.errors
        foreign = [u for u in self.requests if not u.startswith(self.base)]
        assert not foreign, f"requests left the machine: {foreign}"

    def close(self) -> None:
        self.context.close()


CHART_PROBE = """() => Array.from(document.querySelectorAll('.chart[data-rendered]')).map(el => {
  const visible = node => { const b = node.getBoundingClientRect();
                            return b.width > 0.5 || b.height > 0.5; };
  const marks = el.querySelectorAll(
    '.barlayer .point path, .scatterlayer path.point, .scatterlayer path.js-line');
  const axis = name => (el._fullLayout[name] || {}).range || null;
  return {name: el.id.replace(/^chart-/, ''),
          marks: Array.from(marks).filter(visible).length,
          labels: el.querySelectorAll('.scatterlayer .textpoint').length,
          legend: el.querySelectorAll('.legend .traces').length,
          traces: el.data.length, x: axis('xaxis'), y: axis('yaxis')};
})"""


@pytest.mark.browser
def test_browser_pages_show_sql_numbers(browser: Any, server: str, seeded: Seeded,
                                        shots: Path) -> None:
    tab = Tab(browser, server)
    try:
        page = tab.open("/")
        for run, values in expected_runs(seeded).items():
            for col, kind in (("episodes", "int"), ("success_rate", "pct"),
                              ("cost_per_episode", "usd"), ("teacher_call_rate", "pct"),
                              ("total_cost", "usd")):
                shown, raw = tab.cell("runs", "run_id", run, col)
                assert shown == fmt(values[col], kind), (run, col)
                assert float(raw) == pytest.approx(values[col])
        (total,), = seeded.sql("SELECT sum(cost_usd) FROM episodes")
        kpi = page.locator('[data-kpi="total_spend"] .kpi-value').inner_text()
        assert kpi == fmt(total, "usd")
        scatter = tab.check_charts_drawn()["accuracy_vs_cost"]
        # Runs are told apart by the legend (and tooltips), not by labels piled on the points.
        assert scatter["labels"] == 0 and scatter["legend"] == scatter["traces"] > 1
        assert scatter["y"][0] >= 0 and scatter["y"][1] <= 1
        page.screenshot(path=str(shots / "overview.png"), full_page=True)

        tab.open("/costs")
        for day, split in expected_costs_by_day(seeded).items():
            for who in ("teacher", "student", "memory"):
                shown, _ = tab.cell("costs_by_day", "day", day, f"{who}_usd")
                assert shown == fmt(split.get(who, 0.0), "usd"), (day, who)
        charts = tab.check_charts_drawn()
        assert set(charts) == {"spend_over_time", "cumulative_by_run", "cache_saving_by_run"}
        # The three days' noon calls, binned by hour over a two-day span; elapsed time in hours.
        assert charts["cumulative_by_run"]["x"][1] >= 24
        tab.page.screenshot(path=str(shots / "costs.png"), full_page=True)

        tab.open("/cascade")
        for bucket, (steps, teacher) in expected_histogram(seeded).items():
            label = "1.0" if bucket == UNANIMOUS else f"{bucket / 10:.1f}–{(bucket + 1) / 10:.1f}"
            assert tab.cell("agreement", "agreement", label, "steps")[0] == fmt(steps, "int")
            assert tab.cell("agreement", "agreement", label, "teacher_steps")[0] == \
                fmt(teacher, "int")
        assert "no teacher labels" in tab.page.inner_text("main")
        charts = tab.check_charts_drawn()
        for name in ("rate_by_task", "rate_by_step", "teacher_rate_curve"):
            assert charts[name]["y"] == [0, 1], name  # never below 0% nor above 100%
        tab.page.screenshot(path=str(shots / "cascade.png"), full_page=True)

        tab.open("/models")
        for model, (calls, tokens, spend) in expected_models(seeded).items():
            assert tab.cell("models", "model", model, "calls")[0] == fmt(calls, "int")
            assert tab.cell("models", "model", model, "tokens")[0] == fmt(tokens, "int")
            assert tab.cell("models", "model", model, "spend")[0] == fmt(spend, "usd")
        tab.page.screenshot(path=str(shots / "models.png"), full_page=True)

        tab.open("/episodes")
        (n,), = seeded.sql("SELECT count(*) FROM episodes")
        assert tab.page.get_attribute('[data-kpi="episodes"]', "data-value") == str(n)
        tab.page.screenshot(path=str(shots / "episodes.png"), full_page=True)
        tab.check_clean()
    finally:
        tab.close()


@pytest.mark.browser
def test_browser_click_through_to_an_episode(browser: Any, server: str, seeded: Seeded,
                                             shots: Path) -> None:
    tab = Tab(browser, server)
    try:
        page = tab.open("/")
        page.locator('#table-runs td[data-col="run_id"] a', has_text="distill-1").click()
        tab.settle()
        assert "run=distill-1" in page.url
        (n,), = seeded.sql("SELECT count(*) FROM episodes WHERE run_id = 'distill-1'")
        assert page.get_attribute('[data-kpi="episodes"]', "data-value") == str(n)
        finished = page.locator("#table-episodes tbody tr").filter(
            has=page.locator('td[data-col="status"][data-value="success"]'))
        first = finished.first.locator("a.episode-link")
        ep_id = int(first.inner_text())
        first.click()
        tab.settle()
        assert page.url.endswith(f"/episodes/{ep_id}")
        (steps, teacher, cost), = seeded.sql(
            "SELECT n_steps, teacher_steps, cost_usd FROM episodes WHERE id = :id", id=ep_id)
        assert page.locator("article.step").count() == steps
        assert page.locator("article.step.actor-teacher").count() == teacher
        assert page.locator('[data-kpi="cost"] .kpi-value').inner_text() == fmt(cost, "usd")
        # Each step shows the student's samples, the accepted action and the retrieved demos.
        step0 = page.locator("#step-0")
        assert step0.locator("table.samples tbody tr").count() == 3
        assert step0.locator(".final-action").inner_text() == "go to shelf 1"
        step0.locator("details.demos summary").click()  # collapsed until asked for
        assert "demo action 0" in step0.locator("details.demos pre").inner_text()
        page.screenshot(path=str(shots / "episode.png"), full_page=True)

        with page.expect_download() as download:
            page.click("#csv-episode_steps")
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        assert len(rows) == steps
        tab.check_clean()
    finally:
        tab.close()


@pytest.mark.browser
def test_browser_filters(browser: Any, server: str, seeded: Seeded, shots: Path) -> None:
    tab = Tab(browser, server)
    try:
        page = tab.open("/costs")
        page.select_option('select[name="task_type"]', ["clean"])
        page.select_option('select[name="run"]', ["distill-1"])
        page.fill('input[name="from"]', "2026-01-10")
        page.fill('input[name="to"]', "2026-01-11")
        page.click("#filters button[type=submit]")
        tab.settle()
        assert "task_type=clean" in page.url and "from=2026-01-10" in page.url
        (want,), = seeded.sql(
            "SELECT sum(c.cost_usd) FROM llm_calls c JOIN episodes e ON e.id = c.episode_id "
            "WHERE e.task_type = 'clean' AND c.run_id = 'distill-1' "
            "AND date(c.created_at) BETWEEN '2026-01-10' AND '2026-01-11'")
        assert want
        shown = page.locator('[data-kpi="total_spend"]')
        assert float(shown.get_attribute("data-value") or 0) == pytest.approx(want)
        assert shown.locator(".kpi-value").inner_text() == fmt(want, "usd")
        assert page.locator("#table-costs_by_run tbody tr").count() == 1
        page.screenshot(path=str(shots / "costs-filtered.png"), full_page=True)
        # The filters follow the navigation.
        page.click("#nav-cascade")
        tab.settle()
        assert "task_type=clean" in page.url
        tab.check_clean()
    finally:
        tab.close()


@pytest.mark.browser
def test_browser_html_report_works_offline(browser: Any, seeded: Seeded, tmp_path: Path,
                                           shots: Path) -> None:
    from agentkd.dashboard import write_report

    report = Path(write_report(seeded.url, str(tmp_path / "report.html")))
    tab = Tab(browser, report.as_uri())
    try:
        page = tab.open("")
        for run, values in expected_runs(seeded).items():
            assert tab.cell("runs", "run_id", run, "total_cost")[0] == \
                fmt(values["total_cost"], "usd")
        assert page.locator('.chart[data-rendered]').count() == 2  # drawn by the inline JS
        page.screenshot(path=str(shots / "report.png"), full_page=True)
        tab.check_clean()  # nothing but the file itself was requested
    finally:
        tab.close()


@pytest.mark.browser
def test_browser_draws_every_cost_chart_of_a_run_of_minutes(browser: Any, tmp_path: Path,
                                                             shots: Path) -> None:
    from test_cache_dashboard import short_run

    log = short_run(f"sqlite:///{tmp_path / 'short.db'}")
    import uvicorn

    from agentkd.dashboard.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(log.url, refresh_interval_s=0.0),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    tab = Tab(browser, f"http://127.0.0.1:{port}")
    try:
        tab.open("/costs")
        charts = tab.check_charts_drawn()
        spend, cumulative = charts["spend_over_time"], charts["cumulative_by_run"]
        # Bars a minute apart on an axis of minutes (not half a millisecond), and the
        # cumulative line over the four minutes since the first call.
        start, end = (datetime.fromisoformat(v[:19]) for v in spend["x"])
        assert timedelta(minutes=3) < end - start < timedelta(minutes=10)
        assert spend["marks"] == 8  # four minutes × (teacher, student)
        assert cumulative["x"][0] <= 0 and 4 <= cumulative["x"][1] < 5
        share = tab.page.get_attribute('[data-kpi="cache_hit_share"]', "data-value")
        assert float(share or 0) == 1200 / 6000
        tab.page.screenshot(path=str(shots / "costs-short-run.png"), full_page=True)
        tab.check_clean()
    finally:
        tab.close()
        server.should_exit = True
        thread.join(10)
        log.close()
