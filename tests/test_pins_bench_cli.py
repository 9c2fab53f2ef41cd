"""`agentkd bench alfworld`'s options through the CLI on real games, each checked in the log it
wrote: --stratify (which games), --cascade and --shadow (the cascade the run used, a label on
every step), --price (what each student call cost) and --workers (episodes from two processes).
The `agentkd demo` command itself is tested in tests/test_demo_cli.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

import agentkd
from agentkd.cli import app
from agentkd.config import Cascade, save_cascade
from agentkd.envs.alfworld import AlfWorldEnv, list_games
from agentkd.envs.bench import stratified
from agentkd.log import Run

STUDENT = "scripted/bench-pin-student"


def stratified_task_ids(count: int) -> list[str]:
    return [AlfWorldEnv(g).task_id for g in stratified(list_games("valid_seen"), count)]


def test_bench_cli_stratify_cascade_shadow_and_price(scripted, tmp_path: Path) -> None:
    from agentkd.retrieval import DemoStore

    DemoStore.open(tmp_path / "demos", create=True).close()
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: look"] * n
    cascade = save_cascade(tmp_path / "cascade.json", Cascade(samples=2, agreement=1.0,
                                                              sampling="n", shadow=0.0))
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(app, [
        "bench", "alfworld", "--mode", "distill", "--student", STUDENT,
        "--demos", str(tmp_path / "demos"), "--episodes", "2", "--stratify", "--max-steps", "2",
        "--cascade", str(cascade), "--shadow", "1.0", "--price", f"{STUDENT}=3,4",
        "--workers", "1", "--log", url, "--run", "options"])
    assert result.exit_code == 0, result.output
    log = agentkd.TrajectoryLog(url)
    episodes = log.episodes("options")
    # --stratify: the first game of each of two task types, not the split's first two games.
    assert [e.task_id for e in episodes] == stratified_task_ids(2)
    assert stratified_task_ids(2) != [AlfWorldEnv(g).task_id
                                      for g in list_games("valid_seen")[:2]]
    with log.session() as s:
        config = s.get(Run, "options").config
    assert config["cascade"]["samples"] == 2  # from --cascade
    assert config["cascade"]["shadow"] == 1.0  # --shadow wins over the file's 0.0
    calls = [c for e in episodes for c in log.calls(e.id)]
    student = [c for c in calls if c.role == "student"]
    assert len(student) == 4 and all(c.n == 2 for c in student)  # 2 episodes x 2 steps
    for c in student:  # --price: $3 / $4 per million tokens
        assert c.cost_usd == pytest.approx((3 * c.prompt_tokens + 4 * c.completion_tokens) / 1e6,
                                           rel=1e-12)
        assert c.completion_tokens == 2 * 2  # two samples of 'Action: look'
    steps = [s for e in episodes for s in log.steps(e.id)]
    assert len(steps) == 4 and all(s.actor == "student" for s in steps)
    # --shadow 1.0: every step labelled by the expert, each at the cost of one shadow call.
    assert all(s.shadow and s.teacher_action is not None for s in steps)
    assert sum(c.role == "shadow" for c in calls) == 4


@pytest.mark.slow  # two spawned workers, each loading agentkd and ALFWorld
def test_bench_cli_workers_play_the_games_in_two_processes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'workers.db'}"
    result = CliRunner().invoke(app, [
        "bench", "alfworld", "--mode", "teacher", "--episodes", "2", "--stratify",
        "--workers", "2", "--log", url, "--run", "two"])
    assert result.exit_code == 0, result.output
    log = agentkd.TrajectoryLog(url)
    episodes = log.episodes("two")
    assert sorted(e.task_id for e in episodes) == sorted(stratified_task_ids(2))
    # The seeded expert wins both games (in 5 and 15 steps, see tests/test_demo_cli.py).
    assert [(e.status, e.success) for e in episodes] == [("success", True)] * 2
    assert sorted(e.n_steps for e in episodes) == [5, 15]
