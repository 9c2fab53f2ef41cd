"""The cost page for a run of minutes with prompt caching: spend binned per minute, cumulative
spend against minutes elapsed, and the cache hit share and saving per run and model, each
checked against plain SQL over the log (drawn in chromium by tests/test_dashboard.py)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import importable, require
from sqlalchemy import text, update

from agentkd.dashboard import Dashboard, Filters
from agentkd.log import CallRecord, LLMCall, StepRecord, TrajectoryLog

require(importable("fastapi") and importable("jinja2"),
        "the dashboard tests need fastapi and jinja2: pip install 'agentkd[dashboard]'")

T, S = "anthropic/claude-sonnet-4-5", "local/smollm2-135m"
START = datetime(2026, 3, 1, 9, 30)


def short_run(url: str) -> TrajectoryLog:
    """A distill run of four minutes: a step a minute, student calls with cache reads."""
    log = TrajectoryLog(url)
    log.ensure_run("short", mode="distill", teacher=T, student=S)
    episode = log.start_episode("short", "task")
    for k in range(4):
        log.record_step(episode, "short", StepRecord(
            idx=k, prompt_hash=str(k), new_messages=[], verdict="student", actor="student"), [
            CallRecord(role="student", model=S, provider="local", prompt_tokens=1000,
                       completion_tokens=10, cached_tokens=200 * k, cost_usd=0.001 * (4 - k),
                       uncached_cost_usd=0.004),
            CallRecord(role="teacher", model=T, provider="anthropic", prompt_tokens=500,
                       completion_tokens=20, cached_tokens=0, cache_write_tokens=400,
                       cost_usd=0.01, uncached_cost_usd=0.009)])
    log.finish_episode(episode, status="success", success=True)
    with log.engine.begin() as conn:  # call k at minute k, step k's pair at 09:30+k
        conn.execute(update(LLMCall).values(created_at=text(
            "datetime('2026-03-01 09:30:00', '+' || ((id - 1) / 2) || ' minutes')")))
    return log


@pytest.fixture
def log(tmp_path: Path) -> Any:
    log = short_run(f"sqlite:///{tmp_path / 'short.db'}")
    yield log
    log.close()


def test_a_run_of_minutes_is_charted_per_minute(log: TrajectoryLog) -> None:
    page = Dashboard(log).costs(Filters())
    charts = {c.name: c.figure for c in page.charts}
    spend = charts["spend_over_time"]
    assert [t["name"] for t in spend["data"]] == ["teacher", "student"]
    minutes = [(START + timedelta(minutes=k)).isoformat(sep=" ") for k in range(4)]
    assert spend["data"][0]["x"] == minutes
    assert spend["data"][1]["y"] == pytest.approx([0.004, 0.003, 0.002, 0.001])
    assert spend["data"][0]["width"] == pytest.approx(60_000 * 0.9)
    (line,) = charts["cumulative_by_run"]["data"]
    assert line["x"] == [0.0, 1.0, 2.0, 3.0, 4.0]  # minutes since the first call, from $0
    assert line["y"] == pytest.approx([0.0, 0.014, 0.027, 0.039, 0.05])
    assert "minutes" in charts["cumulative_by_run"]["layout"]["xaxis"]["title"]["text"]


def test_cache_hit_share_and_saving_per_run_and_model(log: TrajectoryLog) -> None:
    page = Dashboard(log).costs(Filters())
    rows = {r["model"]: r for r in page.table("cache_by_run_model").rows}
    with log.engine.connect() as conn:
        expected = {model: (prompt, cached, cost, uncached) for model, prompt, cached, cost,
                    uncached in conn.execute(text(
                        "SELECT model, sum(prompt_tokens), sum(cached_tokens), sum(cost_usd), "
                        "sum(uncached_cost_usd) FROM llm_calls GROUP BY model"))}
    for model, (prompt, cached, cost, uncached) in expected.items():
        assert rows[model]["cache_hit_share"] == cached / prompt
        assert rows[model]["cache_saving_usd"] == pytest.approx(uncached - cost)
    assert rows[S]["cache_hit_share"] == 1200 / 4000
    assert rows[T]["cache_saving_usd"] == pytest.approx(-0.004)  # writes cost more
    kpis = {key: value for key, _, value, _ in page.kpis}
    assert kpis["cache_hit_share"] == 1200 / 6000
    assert kpis["cache_saving"] == pytest.approx(0.052 - 0.05)
    assert kpis["uncached_spend"] == pytest.approx(0.052)

