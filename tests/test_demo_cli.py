"""`agentkd demo` on its real games: the students' step cap is one the teacher met, and the
report withholds the saving of a student below the teacher's success."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ScriptedLLM
from typer.testing import CliRunner

from agentkd.cli import app
from agentkd.log import TrajectoryLog
from agentkd.report import BELOW_TEACHER, run_summaries


@pytest.mark.slow  # real ALFWorld games: about 100 steps in all
def test_demo_caps_the_students_at_the_teachers_longest_episode(scripted: ScriptedLLM,
                                                                 tmp_path: Path) -> None:
    # A student that only looks around: it never wins, so it plays every game to the cap.
    scripted.scripts["scripted/student"] = lambda messages, n: ["Action: look"] * n
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--train-games", "1",
                                      "--student", "scripted/student"])
    assert result.exit_code == 0, result.output
    log = TrajectoryLog(f"sqlite:///{tmp_path / 'demo.db'}")
    summaries = {s.mode: s for s in run_summaries(log)}
    steps = {mode: [e.n_steps for e in log.episodes(s.run_id)] for mode, s in summaries.items()}
    # The demo's two stratified valid_seen games take the expert 5 and 15 steps: with the old
    # fixed cap of 10 it lost the second.
    teacher = summaries["teacher"]
    assert (teacher.wins, teacher.episodes) == (2, 2)
    cap = max(steps["teacher"])
    assert f"students' step cap: {cap}" in result.output
    for mode in ("student", "icd", "distill"):
        assert steps[mode] == [cap, cap], mode
        assert summaries[mode].wins == 0
        assert summaries[mode].saving_withheld == BELOW_TEACHER
    assert BELOW_TEACHER in " ".join(result.output.split())
