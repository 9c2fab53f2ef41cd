"""The report: success with its interval, and a saving claimed only where the run succeeds as
often as the teacher on the same tasks; every number readable on a narrow terminal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console
from sqlalchemy import text
from typer.testing import CliRunner

from agentkd.log import CallRecord, TrajectoryLog
from agentkd.report import (
    BELOW_TEACHER,
    IS_BASELINE,
    NO_BASELINE,
    NO_SAVING,
    RunSummary,
    run_summaries,
    summary_table,
    wilson_interval,
)

T, S = "scripted/teacher", "scripted/student"
LABEL = "priced oracle teacher"


def _episode(log: TrajectoryLog, run: str, task: str, won: bool, cost: float) -> None:
    episode = log.start_episode(run, task)
    log.record_calls(run, episode, [CallRecord(role="teacher", model=T, provider="scripted",
                                               cost_usd=cost)])
    log.finish_episode(episode, status="success" if won else "failure", success=won)


def _run(log: TrajectoryLog, run: str, mode: str, games: list[tuple[str, bool, float]],
         teacher: str = T) -> None:
    log.ensure_run(run, mode=mode, teacher=teacher, label=LABEL,
                   student=None if mode in ("teacher", "collect") else S)
    for task, won, cost in games:
        _episode(log, run, task, won, cost)


def _summaries(log: TrajectoryLog) -> dict[str, RunSummary]:
    return {s.run_id: s for s in run_summaries(log)}


# ---- the interval -------------------------------------------------------------------------

@pytest.mark.parametrize(("wins", "n", "low", "high"), [
    (0, 2, 0.0, 0.65762), (1, 2, 0.09453, 0.90547), (2, 2, 0.34238, 1.0),
    (0, 10, 0.0, 0.27753), (5, 6, 0.4365, 0.96995), (119, 134, 0.82351, 0.93098),
])
def test_wilson_interval_matches_scipys(wins: int, n: int, low: float,
                                                  high: float) -> None:
    assert wilson_interval(wins, n) == pytest.approx((low, high), abs=5e-5)


def test_no_episodes_no_interval() -> None:
    assert wilson_interval(0, 0) is None


# ---- the saving, on the same tasks ----------------------------------------------------------

def test_break_even_is_collection_cost_over_the_saving_on_the_same_tasks(tmp_path: Path) -> None:
    """Every cost is a binary fraction, so each sum is exact and so is the expected value."""
    log = TrajectoryLog(f"sqlite:///{tmp_path / 'log.db'}")
    _run(log, "collect", "collect", [("train-1", True, 0.75), ("train-2", True, 1.25)])
    _run(log, "teacher", "teacher", [("g1", True, 0.5), ("g2", True, 0.625),
                                     ("g3", False, 0.5), ("g4", True, 0.375)])
    # Another teacher on the same games, and the teacher on a game distill never played:
    # neither may enter distill's baseline.
    _run(log, "other-teacher", "teacher", [("g1", True, 4.0), ("g2", True, 4.0)],
         teacher="scripted/other")
    _run(log, "teacher-more", "teacher", [("g9", True, 8.0)])
    # Distill replays g1 and plays g5, which no teacher played: neither changes the comparison
    # but both count in its own success and cost per episode.
    _run(log, "distill", "distill", [("g1", True, 0.125), ("g1", True, 0.25),
                                     ("g2", False, 0.125), ("g3", True, 0.0625),
                                     ("g4", True, 0.125), ("g5", False, 2.0)])
    summary = _summaries(log)["distill"]

    def sql(query: str) -> float:
        with log.engine.connect() as conn:
            return float(conn.execute(text(query)).scalar_one())

    shared = ("SELECT task_id FROM episodes WHERE run_id = 'distill' INTERSECT "
              "SELECT e.task_id FROM episodes e JOIN runs r ON r.id = e.run_id "
              "WHERE r.mode = 'teacher' AND r.teacher = 'scripted/teacher'")
    teacher_cpe = sql("SELECT sum(e.cost_usd) / count(*) FROM episodes e JOIN runs r ON "
                      "r.id = e.run_id WHERE r.mode = 'teacher' AND r.teacher = "
                      f"'scripted/teacher' AND e.task_id IN ({shared})")
    run_cpe = sql("SELECT sum(cost_usd) / count(*) FROM episodes WHERE run_id = 'distill' "
                  f"AND task_id IN ({shared})")
    collection = sql("SELECT sum(e.cost_usd) FROM episodes e JOIN runs r ON r.id = e.run_id "
                     "WHERE r.mode = 'collect' AND r.teacher = 'scripted/teacher'")
    assert (teacher_cpe, run_cpe, collection) == (0.5, 0.1375, 2.0)  # by hand
    assert summary.break_even_episodes == collection / (teacher_cpe - run_cpe)
    assert summary.relative_cost == run_cpe / teacher_cpe
    assert summary.baseline_cost_per_episode == teacher_cpe
    assert (summary.compared_episodes, summary.baseline_episodes,
            summary.baseline_wins) == (5, 4, 3)
    assert summary.saving_withheld is None
    # Its own numbers are over all its episodes, g5 included.
    assert (summary.episodes, summary.wins) == (6, 4)
    assert summary.cost_per_episode == 2.6875 / 6
    assert (summary.success_low, summary.success_high) == wilson_interval(4, 6)


def test_a_run_below_the_teachers_interval_gets_no_saving(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    log = TrajectoryLog(url)
    _run(log, "collect", "collect", [("train-1", True, 1.0)])
    _run(log, "teacher", "teacher", [("g1", True, 0.5), ("g2", True, 0.5)])
    # Ten times cheaper, and it lost both games.
    _run(log, "student", "student", [("g1", False, 0.05), ("g2", False, 0.05)])
    by_run = _summaries(log)
    student = by_run["student"]
    assert (student.wins, student.episodes) == (0, 2)
    assert student.baseline_success_low == pytest.approx(0.34238, abs=5e-5)
    assert student.relative_cost is None and student.break_even_episodes is None
    assert student.saving_withheld == BELOW_TEACHER
    teacher = by_run["teacher"]
    assert teacher.relative_cost == 1.0 and teacher.break_even_episodes is None
    assert teacher.saving_withheld == IS_BASELINE

    from agentkd.cli import app

    result = CliRunner().invoke(app, ["report", "--log", url, "--json"])
    assert result.exit_code == 0, result.output
    row = next(r for r in json.loads(result.output) if r["run_id"] == "student")
    assert row["relative_cost"] is None and row["break_even_episodes"] is None
    assert row["saving_withheld"] == "below teacher success"
    assert row["success_low"] == 0.0 and row["success_high"] == pytest.approx(0.65762, abs=5e-5)
    for width in (80, 250):
        assert BELOW_TEACHER in _render(width, [student])


def test_success_within_or_above_the_teachers_interval_keeps_the_saving(tmp_path: Path) -> None:
    log = TrajectoryLog(f"sqlite:///{tmp_path / 'log.db'}")
    _run(log, "teacher", "teacher", [("g1", True, 0.5), ("g2", False, 0.5)])
    _run(log, "within", "icd", [("g1", False, 0.25), ("g2", True, 0.25)])
    _run(log, "above", "distill", [("g1", True, 0.25), ("g2", True, 0.25)])
    _run(log, "dearer", "distill", [("g1", True, 1.0), ("g2", False, 1.0)])
    by_run = _summaries(log)
    for run in ("within", "above"):
        assert by_run[run].relative_cost == 0.5
        assert by_run[run].break_even_episodes == 0.0  # no collect run: nothing to pay off
    assert by_run["dearer"].relative_cost == 2.0
    assert by_run["dearer"].break_even_episodes is None
    assert by_run["dearer"].saving_withheld == NO_SAVING


def test_no_teacher_run_on_the_same_tasks_means_no_comparison(tmp_path: Path) -> None:
    log = TrajectoryLog(f"sqlite:///{tmp_path / 'log.db'}")
    _run(log, "collect", "collect", [("train-1", True, 1.0), ("train-2", True, 1.0)])
    _run(log, "teacher", "teacher", [("valid-1", True, 1.0)])
    _run(log, "distill", "distill", [("valid-2", True, 0.125)])
    summary = _summaries(log)["distill"]
    assert summary.relative_cost is None and summary.break_even_episodes is None
    assert summary.saving_withheld == NO_BASELINE
    assert summary.baseline_episodes == 0 and summary.baseline_success_rate is None


def test_collect_runs_are_the_baseline_where_no_teacher_run_played_the_tasks(
        tmp_path: Path) -> None:
    log = TrajectoryLog(f"sqlite:///{tmp_path / 'log.db'}")
    _run(log, "collect", "collect", [("g1", True, 1.0), ("g2", True, 1.0)])
    _run(log, "distill", "distill", [("g1", True, 0.25), ("g2", True, 0.25)])
    summary = _summaries(log)["distill"]
    assert summary.relative_cost == 0.25
    assert summary.break_even_episodes == 2.0 / 0.75


# ---- the table ------------------------------------------------------------------------------

def _summary(mode: str, accepted: float | None = None, withheld: str | None = None
             ) -> RunSummary:
    interval = wilson_interval(1, 2)
    assert interval is not None
    return RunSummary(run_id=f"demo-20261127-033130-{mode}", mode=mode, teacher="alfworld/expert",
                      student=None if mode == "teacher" else "local/qwen2.5-coder-1.5b",
                      label=LABEL, episodes=2, wins=1, success_rate=0.5,
                      success_low=interval[0], success_high=interval[1],
                      compared_episodes=2, baseline_episodes=2, baseline_wins=1,
                      baseline_success_rate=0.5, baseline_success_low=interval[0],
                      baseline_success_high=interval[1], baseline_cost_per_episode=0.0386,
                      steps_per_episode=7.5, teacher_call_rate=0.1, cost_per_episode=0.01081,
                      total_cost=0.02162,
                      relative_cost=None if withheld else 0.28,
                      break_even_episodes=None if withheld else 54.0,
                      saving_withheld=withheld,
                      labelled_accepted=5 if accepted is not None else 0,
                      accepted_accuracy=accepted)


def _render(width: int, summaries: list[RunSummary]) -> str:
    console = Console(width=width, record=True)
    console.print(summary_table(summaries, width=console.width))
    return console.export_text()


def test_narrow_terminal_gets_every_number_unwrapped_and_the_models_named():
    text = _render(80, [_summary("teacher"), _summary("distill")])
    assert max(len(line) for line in text.splitlines()) <= 80
    for cell in ("distill", "1/2 (9–91%)", "7.5", "10.0%", "0.01081", "0.28×, 54"):
        assert cell in text
    assert "…" not in text
    words = " ".join(text.split())  # the title and caption wrap at word boundaries
    assert "teacher: alfworld/expert (priced oracle teacher)" in words
    assert "student: local/qwen2.5-coder-1.5b" in words
    assert "accepted" not in text  # no run has shadow labels


def test_narrow_terminal_fits_the_withheld_saving_and_the_accepted_column():
    text = _render(80, [_summary("student", accepted=0.4, withheld=BELOW_TEACHER),
                        _summary("distill", accepted=0.4)])
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    assert "40.0% (5)" in text and "0.28×, 54" in text
    # The reason is the last column: where it wraps, its lines still read in order.
    assert BELOW_TEACHER in " ".join(text.split())


def test_labelled_runs_show_accepted_accuracy_in_both_layouts():
    for width in (80, 250):
        text = _render(width, [_summary("distill", accepted=0.4)])
        assert "40.0% (5)" in text


def test_wide_terminal_keeps_run_ids_models_and_the_teachers_success_as_columns():
    text = _render(250, [_summary("distill"), _summary("icd", withheld=BELOW_TEACHER)])
    assert "demo-20261127-033130-distill" in text
    assert "teacher calls" in text and "teacher success" in text
    assert "alfworld/expert (priced oracle teacher)" in text
    assert "0.28×" in text and "54" in text and BELOW_TEACHER in text
