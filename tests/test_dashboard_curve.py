"""The cascade page's learning curves ("Teacher calls as the run goes"): a real grown-store
distill run over the scripted provider, served through TestClient (no browser); the chart's
points are read back from the figure JSON the page embeds."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest
from conftest import grown_distill_run, importable, require

import agentkd
from agentkd.learning import CurvePoint, downsample, learning_curve, learning_curves
from agentkd.log import CallRecord, StepRecord

require(importable("fastapi") and importable("jinja2"),
        "the dashboard tests need fastapi and jinja2: pip install 'agentkd[dashboard]'")

TEACHER, STUDENT = "scripted/teacher", "scripted/student"
TASKS = (("a", "pick"), ("b", "clean"), ("c", "pick"))


@pytest.fixture
def log(scripted: Any, log_url: str, tmp_path: Any) -> agentkd.TrajectoryLog:
    """distill run `curve` (teacher-call rate 1.0, 0.0, 0.0 as its store grows), plus a
    teacher-only run `oracle` of two episodes that the page leaves out unless asked."""

    kd = grown_distill_run(scripted, log_url, tmp_path / "grown", "curve", TASKS)
    kd.log.ensure_run("oracle", mode="teacher", teacher=TEACHER, student=None)
    for task in ("a", "b"):
        episode = kd.log.start_episode("oracle", task)
        kd.log.record_step(episode, "oracle", StepRecord(
            idx=0, prompt_hash=task, new_messages=[], verdict="teacher_only", actor="teacher"),
            [CallRecord(role="teacher", model=TEACHER, provider="scripted", cost_usd=0.5)])
        kd.log.finish_episode(episode, status="success", success=True)
    return kd.log


def _means(values: list[float]) -> list[float]:
    """Running means over the page's window of 10 (the log here is shorter), as learning.py
    sums them."""
    return [sum(values[:i + 1]) / (i + 1) for i in range(len(values))]


def _figures(text: str) -> dict[str, dict[str, Any]]:
    found = re.findall(r'<div class="chart" id="chart-([\w-]+)" data-figure="([^"]*)"', text)
    return {name: json.loads(html.unescape(figure)) for name, figure in found}


def _get(log: agentkd.TrajectoryLog, path: str) -> tuple[str, dict[str, dict[str, Any]]]:
    from fastapi.testclient import TestClient

    from agentkd.dashboard.app import create_app

    response = TestClient(create_app(log.url, refresh_interval_s=0.0),
                          base_url="http://127.0.0.1").get(path)
    assert response.status_code == 200, response.text
    return response.text, _figures(response.text)


def test_cascade_page_charts_the_teacher_call_rate_falling(log: agentkd.TrajectoryLog) -> None:
    text, figures = _get(log, "/cascade")
    assert "Teacher calls as the run goes" in text
    rate, cost = figures["teacher_rate_curve"], figures["cost_curve"]
    # Student-acting runs only, as the rest of the page: the teacher-only run has no line.
    assert [line["name"] for line in rate["data"]] == ["curve (distill)"]
    (line,) = rate["data"]
    assert line["x"] == [1, 2, 3]
    assert line["y"] == [1.0, 0.5, 1 / 3]  # teacher-call rates 1.0, 0.0, 0.0, mean of last 10
    costs = [e.cost_usd for e in log.episodes("curve")]
    assert costs[0] > costs[1] > 0  # the teacher's calls cost more
    (cost_line,) = cost["data"]
    assert cost_line["x"] == [1, 2, 3] and cost_line["y"] == _means(costs)
    assert "thinned" not in text


def test_cascade_curves_follow_the_filters(log: agentkd.TrajectoryLog) -> None:
    # The mode filter brings in the teacher-only run, the run filter narrows to one run.
    _, figures = _get(log, "/cascade?mode=teacher&mode=distill")
    rate = {line["name"]: line["y"] for line in figures["teacher_rate_curve"]["data"]}
    assert rate == {"curve (distill)": [1.0, 0.5, 1 / 3], "oracle (teacher)": [1.0, 1.0]}
    cost = {line["name"]: line["y"] for line in figures["cost_curve"]["data"]}
    assert cost["oracle (teacher)"] == [0.5, 0.5]
    _, figures = _get(log, "/cascade?run=oracle")
    assert figures["teacher_rate_curve"]["data"] == []  # not student-acting: no mode asked
    # The task-type filter keeps episodes a and c, numbered 1 and 2 within the slice.
    _, figures = _get(log, "/cascade?task_type=pick")
    (line,) = figures["teacher_rate_curve"]["data"]
    assert (line["x"], line["y"]) == ([1, 2], [1.0, 0.5])
    costs = [e.cost_usd for e in log.episodes("curve")]
    assert figures["cost_curve"]["data"][0]["y"] == _means([costs[0], costs[2]])


def test_long_runs_are_thinned_and_the_page_says_so(log: agentkd.TrajectoryLog,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from agentkd.dashboard import queries

    monkeypatch.setattr(queries, "CURVE_MAX_POINTS", 2)
    text, figures = _get(log, "/cascade")
    (line,) = figures["teacher_rate_curve"]["data"]
    # First and last kept; the last point is still the mean over all three episodes.
    assert (line["x"], line["y"]) == ([1, 3], [1.0, 1 / 3])
    assert "Learning curves thinned to 2 evenly spaced points for curve (3 episodes)" in text


def test_learning_curves_is_learning_curve_per_run(log: agentkd.TrajectoryLog) -> None:
    both = learning_curves(log, ["oracle", "curve", "none"], window=2)
    assert list(both) == ["oracle", "curve"]
    assert both["curve"] == learning_curve(log, "curve", window=2)
    assert [p.mean_teacher_call_rate for p in both["curve"]] == [1.0, 0.5, 0.0]
    assert learning_curves(log, [], window=2) == {}
    with pytest.raises(ValueError, match="window must be >= 1"):
        learning_curves(log, ["curve"], window=0)


def test_downsample_keeps_first_last_and_spacing() -> None:
    points = [CurvePoint(served=i, task_id=str(i), success=True, steps=1, teacher_steps=0,
                         cost_usd=0.0, teacher_call_rate=0.0, mean_teacher_call_rate=0.0,
                         mean_cost_usd=0.0) for i in range(1, 10_001)]
    kept = [p.served for p in downsample(points, 2000)]
    assert len(kept) == 2000 and kept[0] == 1 and kept[-1] == 10_000
    assert set(b - a for a, b in zip(kept, kept[1:], strict=False)) <= {5, 6}
    assert downsample(points[:5], 2000) == points[:5]
    with pytest.raises(ValueError, match="max_points"):
        downsample(points, 1)
