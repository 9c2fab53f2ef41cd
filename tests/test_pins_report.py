"""Pins of `agentkd report`: every figure of a summary row from a log whose answer is known by
hand, and the table's exact layout, cells and captions (issue 21: the report's formatting and
its counters survived mutation). The break-even against SQL is in tests/test_report.py."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from rich import box
from rich.table import Table

from agentkd.errors import InputError
from agentkd.log import CallRecord, StepRecord, TrajectoryLog
from agentkd.report import (
    BELOW_TEACHER,
    FREE_TEACHER,
    IS_BASELINE,
    NO_BASELINE,
    NO_SAVING,
    WIDE_TABLE,
    RunSummary,
    run_summaries,
    success_cell,
    summary_table,
    teacher_name,
    versus_baseline,
    wilson_interval,
)

T, S = "scripted/teacher", "scripted/student"


class Log:
    """A log written through TrajectoryLog's own API, one call per episode at a given cost."""

    def __init__(self, tmp_path: Path) -> None:
        self.log = TrajectoryLog(f"sqlite:///{tmp_path / 'log.db'}")

    def run(self, run: str, mode: str, teacher: str = T, label: str | None = None,
            config: dict[str, Any] | None = None) -> None:
        self.log.ensure_run(run, mode=mode, teacher=teacher, label=label, config=config,
                            student=None if mode in ("teacher", "collect") else S)

    def episode(self, run: str, task: str, won: bool | None, cost: float,
                status: str | None = None, actors: tuple[str, ...] = (),
                labels: tuple[bool | None, ...] = ()) -> None:
        episode = self.log.start_episode(run, task)
        for i, actor in enumerate(actors):
            label = labels[i] if i < len(labels) else None
            self.log.record_step(episode, run, StepRecord(
                idx=i, prompt_hash=f"h{i}", new_messages=[], actor=actor,
                verdict="student" if actor == "student" else "deferred",
                shadow=label is not None, student_correct=label), [])
        self.log.record_calls(run, episode, [CallRecord(role="teacher", model=T,
                                                        provider="scripted", cost_usd=cost)])
        if status != "running":
            self.log.finish_episode(episode, success=won, status=status or (
                "success" if won else "failure"))

    def summaries(self, run_ids: list[str] | None = None) -> dict[str, RunSummary]:
        return {s.run_id: s for s in run_summaries(self.log, run_ids)}


# ---- the figures of a row -------------------------------------------------------------------

def test_only_finished_episodes_count_but_all_spend_is_in_the_total(tmp_path):
    log = Log(tmp_path)
    log.run("r", "distill")
    log.episode("r", "g1", True, 0.5, actors=("student", "teacher", "student"))
    log.episode("r", "g2", False, 0.25, actors=("teacher",))
    log.episode("r", "g3", None, 0.125, status="done", actors=("student", "student"))
    log.episode("r", "g4", False, 0.0625, status="error")
    log.episode("r", "g5", False, 0.03125, status="budget", actors=("teacher", "teacher"))
    log.episode("r", "g6", False, 1.0, status="interrupted", actors=("teacher",) * 4)
    log.episode("r", "g7", None, 2.0, status="running", actors=("teacher",) * 8)
    r = log.summaries()["r"]
    assert (r.episodes, r.wins, r.success_rate) == (5, 1, 0.2)
    assert (r.success_low, r.success_high) == wilson_interval(1, 5)
    assert r.steps_per_episode == 8 / 5
    assert r.teacher_call_rate == 4 / 8
    assert r.cost_per_episode == (0.5 + 0.25 + 0.125 + 0.0625 + 0.03125) / 5
    assert r.total_cost == 0.5 + 0.25 + 0.125 + 0.0625 + 0.03125 + 1.0 + 2.0
    assert (r.mode, r.teacher, r.student, r.label) == ("distill", T, S, None)


def test_a_run_without_finished_episodes_has_no_rates(tmp_path):
    log = Log(tmp_path)
    log.run("empty", "teacher")
    log.run("stopped", "teacher")
    log.episode("stopped", "g1", False, 0.5, status="interrupted", actors=("teacher",))
    for run in ("empty", "stopped"):
        r = log.summaries()[run]
        assert (r.episodes, r.wins, r.success_rate, r.success_low, r.success_high) == (
            0, 0, None, None, None)
        assert (r.steps_per_episode, r.teacher_call_rate, r.cost_per_episode) == (None,) * 3
        assert (r.relative_cost, r.break_even_episodes, r.saving_withheld) == (
            None, None, NO_BASELINE)
    assert log.summaries()["empty"].total_cost == 0.0
    assert log.summaries()["stopped"].total_cost == 0.5


def test_rows_come_in_creation_order_and_run_ids_select(tmp_path):
    log = Log(tmp_path)
    for run in ("zeta", "alpha", "mid"):
        log.run(run, "teacher")
    assert [s.run_id for s in run_summaries(log.log)] == ["zeta", "alpha", "mid"]
    assert list(log.summaries(["mid", "zeta"])) == ["zeta", "mid"]
    assert log.summaries([]) == {}


def test_accepted_accuracy_counts_the_students_labelled_steps_of_finished_episodes(tmp_path):
    log = Log(tmp_path)
    log.run("r", "distill")
    log.episode("r", "g1", True, 0.1, actors=("student", "student", "teacher", "student"),
                labels=(True, False, False, None))
    log.episode("r", "g2", True, 0.1, actors=("student", "student"), labels=(True, True))
    log.episode("r", "g3", True, 0.1, status="interrupted", actors=("student",),
                labels=(False,))
    r = log.summaries()["r"]
    # Labelled student steps of finished episodes: True, False, True, True. The teacher's
    # labelled step and the interrupted episode's do not count.
    assert (r.labelled_accepted, r.accepted_accuracy) == (4, 0.75)
    log.run("unlabelled", "distill")
    log.episode("unlabelled", "g1", True, 0.1, actors=("student",))
    u = log.summaries()["unlabelled"]
    assert (u.labelled_accepted, u.accepted_accuracy) == (0, None)


# ---- against the teacher ----------------------------------------------------------------------

def test_the_teacher_run_is_the_baseline_before_collect_runs(tmp_path):
    log = Log(tmp_path)
    log.run("collect", "collect")
    log.episode("collect", "g1", True, 4.0)
    log.run("teacher", "teacher")
    log.episode("teacher", "g1", True, 1.0)
    log.run("distill", "distill")
    log.episode("distill", "g1", True, 0.25)
    r = log.summaries()["distill"]
    assert (r.baseline_cost_per_episode, r.relative_cost) == (1.0, 0.25)
    assert r.break_even_episodes == 4.0 / (1.0 - 0.25)


def test_each_side_counts_its_episodes_on_a_shared_task_once(tmp_path):
    log = Log(tmp_path)
    log.run("teacher", "teacher")
    for cost in (1.0, 2.0, 3.0):
        log.episode("teacher", "g1", True, cost)
    log.episode("teacher", "g2", False, 8.0)
    log.episode("teacher", "g1", False, 9.0, status="interrupted")  # not finished: no count
    log.run("distill", "distill")
    log.episode("distill", "g1", True, 0.5)
    log.episode("distill", "g1", False, 0.25)
    log.episode("distill", "g3", True, 0.125)  # the teacher never played g3
    r = log.summaries()["distill"]
    assert (r.compared_episodes, r.baseline_episodes, r.baseline_wins) == (2, 3, 3)
    assert r.baseline_success_rate == 1.0
    assert (r.baseline_success_low, r.baseline_success_high) == wilson_interval(3, 3)
    assert r.baseline_cost_per_episode == 2.0
    assert r.relative_cost == 0.375 / 2.0
    # Success on the shared tasks (1/2) is inside the teacher's interval (low 0.438).
    assert r.saving_withheld is None and r.break_even_episodes == 0.0
    teacher = log.summaries()["teacher"]
    assert (teacher.relative_cost, teacher.break_even_episodes, teacher.saving_withheld) == (
        1.0, None, IS_BASELINE)


def test_break_even_pays_off_only_the_same_teachers_collection(tmp_path):
    log = Log(tmp_path)
    log.run("collect", "collect")
    log.episode("collect", "train-1", True, 3.0)
    log.episode("collect", "train-2", True, 1.0, status="interrupted")  # spent all the same
    log.run("other-collect", "collect", teacher="scripted/other")
    log.episode("other-collect", "train-1", True, 100.0)
    log.run("teacher", "teacher")
    log.episode("teacher", "g1", True, 1.0)
    log.run("distill", "distill")
    log.episode("distill", "g1", True, 0.5)
    assert log.summaries()["distill"].break_even_episodes == (3.0 + 1.0) / (1.0 - 0.5)


@pytest.mark.parametrize(("config", "collection"), [
    ({"demos": "store-a", "grow_demos": None}, 3.0),        # read the store collect-a wrote
    ({"demos": "store-a", "grow_demos": ["teacher"]}, 3.0),  # grew a collected store further
    ({"demos": "grown", "grow_demos": ["teacher"]}, 0.0),   # a cold start: grew its own
    ({"demos": None, "grow_demos": None}, 0.0),             # read no store at all
    ({"demos": "built-elsewhere", "grow_demos": None}, 3.0 + 5.0),  # who wrote it? all of them
    ({}, 3.0 + 5.0),                                         # logged without its config
])
def test_break_even_pays_off_the_collection_of_the_store_the_run_read(tmp_path, config,
                                                                       collection):
    log = Log(tmp_path)
    log.run("collect-a", "collect", config={"demos": "store-a"})
    log.episode("collect-a", "train-1", True, 3.0)
    log.run("collect-b", "collect", config={"demos": "store-b"})
    log.episode("collect-b", "train-2", True, 5.0)
    log.run("teacher", "teacher")
    log.episode("teacher", "g1", True, 1.0)
    log.run("distill", "distill", config=config)
    log.episode("distill", "g1", True, 0.5)
    assert log.summaries()["distill"].break_even_episodes == collection / (1.0 - 0.5)


@pytest.mark.parametrize(("run_games", "withheld", "relative"), [
    ([(True, 0.5), (False, 0.5)], None, 0.5),  # 1/2, inside the teacher's interval
    ([(False, 0.5), (False, 0.5)], BELOW_TEACHER, None),  # 0/2 < 0.21 (1/1's low bound)
    ([(True, 1.0), (True, 1.0)], NO_SAVING, 1.0),  # as dear as the teacher
    ([(True, 1.5), (True, 1.5)], NO_SAVING, 1.5),
])
def test_the_saving_against_a_one_game_teacher(tmp_path, run_games, withheld, relative):
    log = Log(tmp_path)
    log.run("teacher", "teacher")
    log.episode("teacher", "g1", True, 1.0)
    log.run("run", "icd")
    for won, cost in run_games:
        log.episode("run", "g1", won, cost)
    r = log.summaries()["run"]
    assert (r.saving_withheld, r.relative_cost) == (withheld, relative)
    assert r.break_even_episodes == (0.0 if withheld is None else None)
    assert r.baseline_success_low == pytest.approx(wilson_interval(1, 1)[0])  # type: ignore[index]


def test_a_free_teacher_gives_no_relative_cost(tmp_path):
    log = Log(tmp_path)
    log.run("teacher", "teacher")
    log.episode("teacher", "g1", True, 0.0)
    log.run("run", "distill")
    log.episode("run", "g1", True, 0.5)
    r = log.summaries()["run"]
    assert (r.relative_cost, r.break_even_episodes, r.saving_withheld) == (
        None, None, FREE_TEACHER)
    assert r.baseline_cost_per_episode == 0.0


def capped_episode(log: Log, run: str, task: str, steps: int, won: bool, cap: int | None,
                   step_cost: float) -> None:
    """An episode of `steps` steps costing `step_cost` each, played under step cap `cap`."""
    episode = log.log.start_episode(run, task)
    for i in range(steps):
        log.log.record_step(episode, run, StepRecord(
            idx=i, prompt_hash=f"h{i}", new_messages=[], actor="teacher", verdict="teacher"),
            [CallRecord(role="teacher", model=T, provider="scripted", cost_usd=step_cost)])
    log.log.finish_episode(episode, success=won, status="success" if won else "failure",
                           info={} if cap is None else {"max_steps": cap})


def test_the_teacher_is_judged_at_the_runs_step_cap(tmp_path):
    # Teacher at a 30-step cap: g1 won in 20 steps, g2 in 10, g3 lost at 30. The run, at a
    # 15-step cap, is compared with a teacher that would have won g2 only and paid for at
    # most 15 steps of each game.
    log = Log(tmp_path)
    log.run("teacher", "teacher")
    for task, steps, won in (("g1", 20, True), ("g2", 10, True), ("g3", 30, False)):
        capped_episode(log, "teacher", task, steps, won, cap=30, step_cost=0.25)
    log.run("distill", "distill")
    for task in ("g1", "g2", "g3"):
        capped_episode(log, "distill", task, 5, task != "g3", cap=15, step_cost=0.125)
    r = log.summaries()["distill"]
    assert (r.baseline_episodes, r.baseline_wins) == (3, 1)
    assert r.baseline_cost_per_episode == (15 * 0.25 + 10 * 0.25 + 15 * 0.25) / 3
    assert r.relative_cost == 0.625 / r.baseline_cost_per_episode
    teacher = log.summaries()["teacher"]  # at its own cap every episode counts as played
    assert (teacher.baseline_wins, teacher.baseline_cost_per_episode) == (2, 60 * 0.25 / 3)


@pytest.mark.parametrize(("teacher_cap", "compared"), [(10, 0), (15, 1), (None, 1)])
def test_a_teacher_with_fewer_steps_than_the_run_is_no_baseline(tmp_path, teacher_cap, compared):
    # A teacher that lost at a 10-step cap might have won with the 15 the run had: left out.
    # Unknown caps (a decorated loop, an older log) are compared as before.
    log = Log(tmp_path)
    log.run("teacher", "teacher")
    capped_episode(log, "teacher", "g1", 10, False, cap=teacher_cap, step_cost=0.25)
    log.run("distill", "distill")
    capped_episode(log, "distill", "g1", 15, False, cap=15, step_cost=0.125)
    r = log.summaries()["distill"]
    assert r.baseline_episodes == compared
    assert r.saving_withheld == (NO_BASELINE if not compared else None)


def test_versus_one_baseline_run_pays_off_the_one_time_cost(tmp_path):
    log = Log(tmp_path)
    for run in ("teacher-a", "teacher-b"):
        log.run(run, "teacher")
    log.episode("teacher-a", "g1", True, 1.0)
    log.episode("teacher-b", "g1", True, 3.0)  # another baseline run: not this comparison's
    log.run("distill", "distill")
    log.episode("distill", "g1", True, 0.25)
    v = versus_baseline(log.log, "distill", "teacher-a", one_time_usd=1.5)
    assert (v["baseline_episodes"], v["baseline_cost_per_episode"]) == (1, 1.0)
    assert (v["success_rate"], v["cost_per_episode"], v["saving_per_episode"]) == (1.0, 0.25, 0.75)
    assert v["break_even_episodes"] == 1.5 / 0.75 and v["relative_cost"] == 0.25
    with pytest.raises(InputError, match="no run 'nope'"):
        versus_baseline(log.log, "nope", "teacher-a", one_time_usd=0.0)


def test_wilson_interval_by_its_formula():
    for wins, n, z in [(1, 2, 1.0), (3, 7, 1.959963984540054), (0, 1, 2.5), (9, 9, 1.5)]:
        p = wins / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson_interval(wins, n, z) == pytest.approx(
            (max(0.0, centre - half), min(1.0, centre + half)), abs=1e-15)
    assert wilson_interval(2, 2)[1] == 1.0 and wilson_interval(0, 2)[0] == 0.0  # type: ignore[index]
    assert wilson_interval(0, -1) is None


# ---- the table --------------------------------------------------------------------------------

def row(run: str, mode: str, **fields) -> RunSummary:
    base = dict(run_id=run, mode=mode, teacher="alfworld/expert", student=S, label=None,
                episodes=2, wins=1, success_rate=0.5, success_low=0.09453, success_high=0.90547,
                steps_per_episode=7.25, teacher_call_rate=0.125, cost_per_episode=0.012341,
                total_cost=0.02469, compared_episodes=2, baseline_episodes=4, baseline_wins=3,
                baseline_success_low=0.30064, baseline_success_high=0.95440,
                relative_cost=0.28, break_even_episodes=54.4, saving_withheld=None)
    base.update(fields)
    return RunSummary(**base)


ROWS = [
    row("run-a", "distill", label="priced oracle teacher", labelled_accepted=5,
        accepted_accuracy=0.4),
    row("run-b", "icd", relative_cost=None, break_even_episodes=None,
        saving_withheld=BELOW_TEACHER, student="local/other"),
    row("run-c", "student", relative_cost=2.0, break_even_episodes=None,
        saving_withheld=NO_SAVING),
    row("run-d", "teacher", student=None, relative_cost=1.0, break_even_episodes=None,
        saving_withheld=IS_BASELINE, episodes=0, wins=0, success_low=None, success_high=None,
        steps_per_episode=None, teacher_call_rate=None, cost_per_episode=None),
]


def cells(table: Table) -> list[list[str]]:
    return [[str(c._cells[i]) for c in table.columns] for i in range(table.row_count)]


def layout(table: Table) -> list[tuple[str, str, bool, str]]:
    return [(str(c.header), c.justify, c.no_wrap, c.overflow) for c in table.columns]


def test_the_wide_table():
    table = summary_table(ROWS, width=WIDE_TABLE)
    assert table.title == ("agentkd runs · teacher: alfworld/expert, "
                           "alfworld/expert (priced oracle teacher)")
    assert table.box is box.HEAVY_HEAD and table.pad_edge is True
    assert table.padding == (0, 1, 0, 1) and table.caption is None
    left, right = "left", "right"
    assert layout(table) == [
        ("run", left, True, "ellipsis"), ("mode", left, True, "ellipsis"),
        ("teacher", left, False, "fold"), ("student", left, False, "fold"),
        ("success (95% CI)", right, True, "ellipsis"), ("teacher success", right, True,
                                                        "ellipsis"),
        ("steps/ep", right, True, "ellipsis"), ("teacher calls", right, True, "ellipsis"),
        ("accepted acc.", right, True, "ellipsis"), ("$/ep", right, True, "ellipsis"),
        ("relative cost", left, False, "fold"), ("break-even eps", right, True, "ellipsis")]
    assert cells(table) == [
        ["run-a", "distill", "alfworld/expert (priced oracle teacher)", S, "1/2 (9–91%)",
         "3/4 (30–95%)", "7.2", "12.5%", "40.0% (5)", "0.01234", "0.28×", "54"],
        ["run-b", "icd", "alfworld/expert", "local/other", "1/2 (9–91%)", "3/4 (30–95%)",
         "7.2", "12.5%", "–", "0.01234", BELOW_TEACHER, "–"],
        ["run-c", "student", "alfworld/expert", S, "1/2 (9–91%)", "3/4 (30–95%)", "7.2",
         "12.5%", "–", "0.01234", "2.00×", "no saving"],
        ["run-d", "teacher", "alfworld/expert", "–", "–", "3/4 (30–95%)", "–", "–", "–", "–",
         "1.00×", "–"]]


def test_the_compact_table():
    table = summary_table(ROWS, title="t", width=WIDE_TABLE - 1)
    assert table.title == "t · teacher: alfworld/expert, alfworld/expert (priced oracle teacher)"
    assert table.box is box.SIMPLE_HEAD and table.pad_edge is False
    assert table.padding == (0, 1, 0, 0)
    left, right = "left", "right"
    assert layout(table) == [
        ("mode", left, True, "ellipsis"), ("success (95%)", right, True, "ellipsis"),
        ("steps/ep", right, True, "ellipsis"), ("teacher%", right, True, "ellipsis"),
        ("accepted", right, True, "ellipsis"), ("$/ep", right, True, "ellipsis"),
        ("vs teacher", left, False, "fold")]
    assert cells(table) == [
        ["distill", "1/2 (9–91%)", "7.2", "12.5%", "40.0% (5)", "0.01234", "0.28×, 54"],
        ["icd", "1/2 (9–91%)", "7.2", "12.5%", "–", "0.01234", BELOW_TEACHER],
        ["student", "1/2 (9–91%)", "7.2", "12.5%", "–", "0.01234", "2.00×, no saving"],
        ["teacher", "–", "–", "–", "–", "–", "1.00×"]]
    assert table.caption == (
        "success: episodes won (95% Wilson interval); vs teacher: relative cost, break-even "
        "episodes, against the teacher-only runs on the same tasks and withheld when success "
        "is below the teacher's interval; teacher% = teacher-call rate; student: "
        f"local/other, {S}; runs: run-a, run-b, run-c, run-d")


def test_the_compact_table_drops_the_accepted_column_without_labels():
    table = summary_table([row("x", "distill")], width=80)
    assert [str(c.header) for c in table.columns] == [
        "mode", "success (95%)", "steps/ep", "teacher%", "$/ep", "vs teacher"]
    assert table.title == "agentkd runs · teacher: alfworld/expert"
    assert table.caption is not None and table.caption.endswith("student: " + S + "; runs: x")
    table = summary_table([row("x", "teacher", student=None)], width=80)
    assert table.caption is not None and "student: –; runs: x" in table.caption


def test_no_width_is_the_wide_table_and_no_rows_no_teacher():
    assert [str(c.header) for c in summary_table(ROWS).columns][0] == "run"
    assert summary_table([], width=300).title == "agentkd runs"


@pytest.mark.parametrize(("args", "cell"), [
    ((1, 2, 0.09453, 0.90547), "1/2 (9–91%)"),
    ((2, 2, 0.34238, 1.0), "2/2 (34–100%)"),
    ((0, 2, 0.0, 0.65762), "0/2 (0–66%)"),
    ((0, 0, 0.0, 1.0), "–"),
    ((1, 2, None, 0.9), "–"),
    ((1, 2, 0.1, None), "–"),
])
def test_success_cell(args, cell):
    assert success_cell(*args) == cell


def test_teacher_name():
    assert teacher_name(row("x", "distill")) == "alfworld/expert"
    assert teacher_name(row("x", "distill", label="oracle")) == "alfworld/expert (oracle)"
