"""The dashboard's runs overview and `agentkd report --html`: the success interval, the teacher,
and "below teacher success" where a run's saving is withheld (served through TestClient, no
browser)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import importable, require

from agentkd.log import CallRecord, TrajectoryLog
from agentkd.report import BELOW_TEACHER, wilson_interval

require(importable("fastapi") and importable("jinja2"),
        "the dashboard tests need fastapi and jinja2: pip install 'agentkd[dashboard]'")

T, S = "scripted/teacher", "scripted/student"
LABEL = "priced oracle teacher"
GAMES = ("g1", "g2")


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Teacher 2/2 at $0.5 an episode; a cheap student that lost both; a distill run that won
    both at a quarter of the cost; $1 of demo collection."""
    url = f"sqlite:///{tmp_path_factory.mktemp('report') / 'log.db'}"
    log = TrajectoryLog(url)
    runs = (("collect", "collect", [("train-1", True, 1.0)]),
            ("teacher", "teacher", [(g, True, 0.5) for g in GAMES]),
            ("student", "student", [(g, False, 0.0625) for g in GAMES]),
            ("distill", "distill", [(g, True, 0.125) for g in GAMES]))
    for run, mode, games in runs:
        log.ensure_run(run, mode=mode, teacher=T, label=LABEL,
                       student=None if mode in ("teacher", "collect") else S)
        for task, won, cost in games:
            episode = log.start_episode(run, task)
            log.record_calls(run, episode, [CallRecord(role="teacher", model=T,
                                                       provider="scripted", cost_usd=cost)])
            log.finish_episode(episode, status="success" if won else "failure", success=won)
    return url


def _cell(html: str, run: str, column: str) -> tuple[str, str]:
    """(raw data-value, shown text) of one cell of the runs table."""
    row = next(r for r in re.findall(r"<tr>.*?</tr>", html, re.S)
               if f'data-col="run_id" data-value="{run}"' in r)
    found = re.search(rf'data-col="{column}" data-value="([^"]*)">(.*?)</td>', row, re.S)
    assert found, (run, column)
    return found.group(1), re.sub(r"<[^>]+>", "", found.group(2)).strip()


def _check(html: str) -> None:
    assert f"Teacher: {T} ({LABEL})" in html
    won, lost = wilson_interval(2, 2), wilson_interval(0, 2)
    assert won is not None and lost is not None
    assert _cell(html, "teacher", "success_low") == (repr(won[0]), f"{won[0]:.1%}")
    assert _cell(html, "teacher", "success_high") == ("1.0", "100.0%")
    assert _cell(html, "student", "success_high")[0] == repr(lost[1])
    assert _cell(html, "student", "baseline_success_low")[0] == repr(won[0])
    # The student lost both games the teacher won: no saving, and the page says why.
    assert _cell(html, "student", "relative_cost") == ("", BELOW_TEACHER)
    assert _cell(html, "student", "break_even_episodes") == ("", BELOW_TEACHER)
    # distill won both at a quarter of the teacher's cost: $1 / ($0.5 - $0.125) per episode.
    assert _cell(html, "distill", "relative_cost") == ("0.25", "0.25×")
    assert _cell(html, "distill", "break_even_episodes")[0] == repr(1.0 / 0.375)


def test_overview_page_shows_interval_teacher_and_withheld_saving(url: str) -> None:
    from fastapi.testclient import TestClient

    from agentkd.dashboard.app import create_app

    response = TestClient(create_app(url), base_url="http://127.0.0.1").get("/")
    assert response.status_code == 200, response.text
    _check(response.text)


def test_html_report_shows_the_same(url: str, tmp_path: Path) -> None:
    from agentkd.dashboard import write_report

    _check(Path(write_report(url, str(tmp_path / "report.html"))).read_text())


def test_overview_kpi_and_chart_leave_out_withheld_runs(url: str) -> None:
    from agentkd.dashboard import Dashboard, Filters

    page = Dashboard(url).overview(Filters())
    kpis: dict[str, Any] = {key: (label, value) for key, label, value, _ in page.kpis}
    assert kpis["best_relative_cost"] == ("lowest relative cost (distill)", 0.25)
    (chart,) = [c for c in page.charts if c.name == "accuracy_vs_cost"]
    names = [trace["name"] for trace in chart.figure["data"]]  # a trace per run
    assert "distill (distill)" in names and not any(n.startswith("student") for n in names)
