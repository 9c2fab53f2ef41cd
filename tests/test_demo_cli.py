"""`agentkd demo` on its real games: the students' step cap is twice one the teacher met, the
cascade defers a looping student to the rescuing teacher, and the report and the conclusion
withhold the saving of a student below the teacher's success."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ScriptedLLM
from typer.testing import CliRunner

from agentkd.cli import app
from agentkd.log import TrajectoryLog
from agentkd.report import BELOW_TEACHER, run_summaries


@pytest.mark.slow  # real ALFWorld games: about 150 steps in all
def test_demo_caps_the_students_at_twice_the_teachers_longest_episode(scripted: ScriptedLLM,
                                                                 tmp_path: Path) -> None:
    # A student that only looks around: alone it never wins, so it plays every game to the cap.
    scripted.scripts["scripted/student"] = lambda messages, n: ["Action: look"] * n
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--train-games", "1",
                                      "--student", "scripted/student"])
    assert result.exit_code == 0, result.output
    log = TrajectoryLog(f"sqlite:///{tmp_path / 'demo.db'}")
    summaries = {s.mode: s for s in run_summaries(log)}
    steps = {mode: [e.n_steps for e in log.episodes(s.run_id)] for mode, s in summaries.items()}
    # The demo's teacher is the rescuing expert; its two stratified valid_seen games take it
    # 3 and 4 steps (the handcoded expert needed 5 and 15, and lost one at the old cap of 10).
    teacher = summaries["teacher"]
    assert (teacher.teacher, teacher.wins, teacher.episodes) == ("alfworld/rescue", 2, 2)
    assert steps["teacher"] == [3, 4]
    assert "students' step cap: 8, twice the teacher's longest episode on these games (4)" \
        in " ".join(result.output.split())
    for mode in ("student", "icd"):
        assert steps[mode] == [8, 8], mode
        assert summaries[mode].wins == 0
        assert summaries[mode].saving_withheld == BELOW_TEACHER
    # distill defers loops: every step it deferred is one where the unanimous 'look' had
    # already been sent back to the same observation, and the teacher took those over.
    distill = summaries["distill"]
    logged = [s for e in log.episodes(distill.run_id) for s in log.steps(e.id)]
    deferred = [s for s in logged if s.verdict == "deferred"]
    assert deferred and all(s.signals["repeat"] for s in deferred)
    assert all(s.actor == "student" for s in logged if s.verdict != "deferred")
    # The one-line conclusion follows the report's rule: a saving only at teacher success.
    text = " ".join(result.output.split())
    line = f"distill won {distill.wins}/2, the teacher alone 2/2"
    if distill.saving_withheld is None:
        assert f"{line}, at {distill.relative_cost:.2f}x the teacher's cost" in text
    else:
        assert f"{line}: {distill.saving_withheld}, no saving claimed" in text
