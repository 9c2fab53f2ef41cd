"""Cache figures in `agentkd report` (table and --json): hit share, cost with and without the
cache credit, the saving, provider-stated costs and their mismatches, per run and per model."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from typer.testing import CliRunner

from agentkd.cli import app
from agentkd.log import CallRecord, StepRecord, TrajectoryLog
from agentkd.report import run_summaries, summary_table

T, S = "scripted/teacher", "scripted/student"


def _step(log: TrajectoryLog, run: str, calls: list[CallRecord]) -> None:
    episode = log.start_episode(run, "task-1")
    log.record_step(episode, run, StepRecord(idx=0, prompt_hash="h", new_messages=[],
                                             verdict="student", actor="student"), calls)
    log.finish_episode(episode, status="success", success=True)


def _log(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = TrajectoryLog(url)
    log.ensure_run("plain", mode="teacher", teacher=T, student=None)
    _step(log, "plain", [CallRecord(role="teacher", model=T, provider="p", prompt_tokens=100,
                                    completion_tokens=10, cost_usd=0.01)])
    log.ensure_run("cached", mode="distill", teacher=T, student=S)
    _step(log, "cached", [
        CallRecord(role="student", model=S, provider="p", prompt_tokens=1000,
                   completion_tokens=5, cached_tokens=0, cache_write_tokens=800,
                   cost_usd=0.0125, uncached_cost_usd=0.0105, provider_cost_usd=0.0125),
        CallRecord(role="student", model=S, provider="p", prompt_tokens=1000,
                   completion_tokens=5, cached_tokens=800, cache_write_tokens=0,
                   cost_usd=0.003, uncached_cost_usd=0.0105, provider_cost_usd=0.004),
        CallRecord(role="teacher", model=T, provider="p", prompt_tokens=200,
                   completion_tokens=20, cached_tokens=50, cost_usd=0.02,
                   uncached_cost_usd=0.025)])
    log.close()
    return url


def test_cache_figures_per_run_and_model(tmp_path: Path) -> None:
    log = TrajectoryLog(_log(tmp_path), create=False)
    by_run = {s.run_id: s for s in run_summaries(log)}
    plain, cached = by_run["plain"].cache, by_run["cached"].cache
    assert (plain.cached_tokens, plain.cache_hit_share, plain.cache_saving) == (0, 0.0, 0.0)
    assert plain.uncached_cost == plain.cost == 0.01  # no uncached figure: counted as billed
    assert (cached.calls, cached.prompt_tokens, cached.cached_tokens,
            cached.cache_write_tokens) == (3, 2200, 850, 800)
    assert cached.cache_hit_share == 850 / 2200
    assert abs(cached.cost - 0.0355) < 1e-12
    assert abs(cached.uncached_cost - 0.046) < 1e-12
    assert abs(cached.cache_saving - (0.046 - 0.0355)) < 1e-12
    assert cached.provider_costed_calls == 2 and cached.cost_mismatches == 1
    assert cached.provider_cost is not None and abs(cached.provider_cost - 0.0165) < 1e-12
    models = {m.model: m for m in by_run["cached"].cache_by_model}
    assert models[S].cache_hit_share == 800 / 2000
    assert abs(models[S].cache_saving - (0.021 - 0.0155)) < 1e-12
    assert models[T].cache_hit_share == 50 / 200 and models[T].cost_mismatches == 0
    log.close()


def test_report_table_and_json_show_the_cache(tmp_path: Path) -> None:
    url = _log(tmp_path)
    log = TrajectoryLog(url, create=False)
    console = Console(width=250, record=True)
    console.print(summary_table(run_summaries(log)))
    text = console.export_text()
    assert "cache hit" in text and "spend w/o cache" in text and "38.6%" in text
    log.close()
    result = CliRunner().invoke(app, ["report", "--log", url, "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["run_id"]: r for r in json.loads(result.output)}
    assert rows["cached"]["cache"]["cached_tokens"] == 850
    assert {m["model"] for m in rows["cached"]["cache_by_model"]} == {S, T}
