"""Budgets: step and USD caps per episode and per run stop cleanly, with everything in the log.

A cap is checked before each step (the step that crosses it completes; its cost is only known
afterwards). An episode over its own cap ends with status 'budget'; a run over its cap raises
`BudgetExceeded` out of the episode in progress, which is marked 'interrupted' so that a resumed
run (with a higher cap) plays it again.
"""

from __future__ import annotations

import functools

import pytest
from reliability_support import check_log
from typer.testing import CliRunner

import agentkd
import agentkd.cli
from agentkd.envs import cli as envs_cli
from agentkd.envs.bench import BenchConfig, run_bench

TEACHER = "scripted/teacher"  # conftest: $10 / $20 per Mtok, tokens = words
MSGS = [{"role": "user", "content": "one two three four five six seven eight nine ten"}]
STEP_COST = (10 * 10 + 2 * 20) / 1e6  # 10 prompt words, "Action: look" = 2 completion words


def loop(kd, task, steps):
    with kd.episode_scope(task_id=task) as ep:
        for _ in range(steps):
            kd.completion(messages=MSGS)
        ep.finish(success=True)


@pytest.fixture
def teacher(scripted):
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    return scripted


def test_step_cap_per_episode(teacher, log_url):
    kd = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url,
                           budget={"max_steps_per_episode": 3})
    with pytest.raises(agentkd.BudgetExceeded, match="reached its step cap of 3 steps") as exc:
        loop(kd, "capped", 5)
    assert exc.value.scope == "episode" and "in the log (status 'budget')" in str(exc.value)
    (episode,) = kd.log.episodes(kd.run_id)
    assert (episode.status, episode.success, episode.n_steps) == ("budget", False, 3)
    assert episode.error.startswith("BudgetExceeded: episode 'capped'")
    assert len(teacher.received) == 3  # the refused step made no call
    check_log(kd.log, kd.run_id)
    # The next episode has its own cap.
    loop(kd, "short", 2)
    assert [e.status for e in kd.log.episodes(kd.run_id)] == ["budget", "success"]


def test_usd_cap_per_episode(teacher, log_url):
    cap = 2.5 * STEP_COST  # crossed by the third step, so the fourth is refused
    kd = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url,
                           budget={"max_usd_per_episode": cap})
    with pytest.raises(agentkd.BudgetExceeded, match=r"spent \$0\.00042") as exc:
        loop(kd, "pricey", 10)
    assert f"its cap is ${cap}" in str(exc.value)
    (episode,) = kd.log.episodes(kd.run_id)
    assert episode.status == "budget" and episode.n_steps == 3
    assert episode.cost_usd == pytest.approx(3 * STEP_COST)
    check_log(kd.log, kd.run_id)
    (summary,) = agentkd.run_summaries(kd.log, run_ids=[kd.run_id])
    assert summary.episodes == 1 and summary.success_rate == 0.0  # counted, not successful


def test_usd_cap_per_run_interrupts_and_resumes_with_a_higher_cap(teacher, log_url):
    run = "capped-run"
    kd = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url, run=run,
                           budget={"max_usd_per_run": 5.5 * STEP_COST})
    loop(kd, "a", 4)
    with pytest.raises(agentkd.BudgetExceeded, match="run 'capped-run' spent") as exc:
        loop(kd, "b", 4)  # two steps fit, the third is refused
    assert exc.value.scope == "run" and "resume the run with a higher cap" in str(exc.value)
    # Starting another episode is refused before any row is written.
    with pytest.raises(agentkd.BudgetExceeded, match="run 'capped-run'"):
        loop(kd, "c", 4)
    statuses = {e.task_id: (e.status, e.n_steps) for e in kd.log.episodes(run)}
    assert statuses == {"a": ("success", 4), "b": ("interrupted", 2)}
    check_log(kd.log, run)
    (summary,) = agentkd.run_summaries(kd.log, run_ids=[run])
    assert summary.episodes == 1 and summary.total_cost == pytest.approx(6 * STEP_COST)

    # Resume: same run id, a higher cap; the interrupted task is played again.
    kd2 = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url, run=run,
                            budget={"max_usd_per_run": 100 * STEP_COST})
    todo = [t for t in ("a", "b", "c") if t not in kd2.log.finished_task_ids(run)]
    assert todo == ["b", "c"]
    for task in todo:
        loop(kd2, task, 4)
    finished = [(e.task_id, e.status) for e in kd2.log.episodes(run) if e.status != "interrupted"]
    assert sorted(finished) == [("a", "success"), ("b", "success"), ("c", "success")]
    check_log(kd2.log, run)


def test_run_cap_counts_what_other_processes_spent(teacher, log_url):
    # Two Distillers on one run stand for two worker processes: each reads the run's total
    # from the log when an episode starts.
    budget = {"max_usd_per_run": 2.5 * STEP_COST}
    a = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url, run="shared",
                          budget=budget)
    b = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url, run="shared",
                          budget=budget)
    loop(a, "a", 3)
    with pytest.raises(agentkd.BudgetExceeded, match="run 'shared'"):
        loop(b, "b", 1)
    assert [e.task_id for e in a.log.episodes("shared")] == ["a"]


@pytest.mark.parametrize("budget", [{"max_usd_per_run": 0}, {"max_steps_per_episode": 0},
                                    {"max_usd_per_episode": -1}, {"max_steps": 3}])
def test_out_of_range_caps_are_config_errors(log_url, budget):
    with pytest.raises(agentkd.ConfigError, match="invalid budget"):
        agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url, budget=budget)


# ---- the bench and its CLI ----------------------------------------------------------------


def test_bench_episode_cap_ends_that_game_and_the_run_goes_on(log_url):
    run_id, outcomes = run_bench(BenchConfig(mode="teacher", split="valid_seen", episodes=2,
                                             log=log_url, run="bench-capped",
                                             budget={"max_steps_per_episode": 2}))
    assert [(o.success, o.steps) for o in outcomes] == [(False, 2), (False, 2)]
    log = agentkd.TrajectoryLog(log_url)
    assert [e.status for e in log.episodes(run_id)] == ["budget", "budget"]
    check_log(log, run_id)


def test_cli_surfaces_a_run_cap_clearly(log_url, monkeypatch):
    # `agentkd bench alfworld` with a run cap: a clear one-line error, exit status 2, and a
    # log that holds every step served (the CLI has no budget flags yet: inject the config).
    monkeypatch.setattr(envs_cli, "BenchConfig",
                        functools.partial(BenchConfig, budget={"max_usd_per_run": 0.004}))
    result = CliRunner().invoke(agentkd.cli.app, [
        "bench", "alfworld", "--mode", "teacher", "--split", "valid_seen", "--episodes", "3",
        "--log", log_url, "--run", "cli-capped"])
    assert result.exit_code == 2, result.output
    out = " ".join(result.output.split())
    assert "error: run 'cli-capped' spent $" in out and "its cap is $0.004" in out
    assert "resume the run with a higher cap" in out and "Traceback" not in out
    log = agentkd.TrajectoryLog(log_url)
    episodes = log.episodes("cli-capped")
    assert episodes and episodes[-1].status == "interrupted"
    assert sum(e.cost_usd for e in episodes) >= 0.004
    check_log(log, "cli-capped")
