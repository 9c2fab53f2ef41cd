"""`agentkd loop alfworld`: finished phases are skipped, a changed phase is redone with the
ones after it, bad input fails cleanly, a distill run below the teacher claims no saving, and
(slow) the real loop on ALFWorld and SmolLM2-135M survives a Ctrl-C and a rerun."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import ScriptedLLM, importable, require
from typer.testing import CliRunner

import agentkd
from agentkd.cli import app
from agentkd.envs.react import PROMPT_VERSION
from agentkd.log import TrajectoryLog
from agentkd.loop import LoopConfig, run_loop
from agentkd.loop.alfworld import PHASES, LoopContext, base_price, report, trained_student
from agentkd.loop.phases import Marker, Phase, fingerprint, read_marker, write_marker
from agentkd.report import BELOW_TEACHER

NAMES = [p.name for p in PHASES]


def stubbed(ran: list[str]) -> tuple[Phase[LoopContext], ...]:
    """The loop's phases with their settings, doing no work: each records that it ran."""

    def work(name: str) -> Any:
        def run(ctx: LoopContext, done: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
            ran.append(name)
            return {"tag": ctx.tags[name], "after": sorted(done)}
        return run

    return tuple(replace(p, run=work(p.name)) for p in PHASES)


def test_a_rerun_skips_finished_phases_and_a_changed_one_redoes_it_and_the_rest(
        tmp_path: Path) -> None:
    config = LoopConfig(workdir=tmp_path / "loop", train_games=2, eval_games=2)
    ran: list[str] = []
    said: list[str] = []
    outputs = run_loop(config, say=said.append, phases=stubbed(ran))
    assert ran == NAMES
    assert outputs["report"]["after"] == sorted(NAMES[:-1])  # it sees the phases before it
    markers = {n: (tmp_path / "loop" / "phases" / f"{n}.json") for n in NAMES}
    before = {n: (m.read_text(), m.stat().st_mtime_ns) for n, m in markers.items()}
    assert all(read_marker(tmp_path / "loop", n) is not None for n in NAMES)

    ran.clear()
    said.clear()
    again = run_loop(config, say=said.append, phases=stubbed(ran))
    assert ran == []
    assert said == [f"{n}: done, skipped" for n in NAMES]
    assert again == outputs
    assert {n: (m.read_text(), m.stat().st_mtime_ns) for n, m in markers.items()} == before

    # More epochs: collect and export stand, training and everything after it is redone
    # under a new fingerprint (its folder and run ids change with it).
    ran.clear()
    said.clear()
    changed = run_loop(config.model_copy(update={"epochs": 2.0}), say=said.append,
                       phases=stubbed(ran))
    assert ran == ["train", "dagger", "calibrate", "distill", "report"]
    assert said[:2] == ["collect: done, skipped", "export: done, skipped"]
    assert changed["export"] == outputs["export"]
    assert all(changed[n]["tag"] != outputs[n]["tag"] for n in ran)
    for name in ("collect", "export"):
        assert (markers[name].read_text(), markers[name].stat().st_mtime_ns) == before[name]

    # A phase interrupted before its marker was written runs again, and so do later ones.
    markers["calibrate"].unlink()
    ran.clear()
    run_loop(config.model_copy(update={"epochs": 2.0}), say=said.append, phases=stubbed(ran))
    assert ran == ["calibrate", "distill", "report"]


@pytest.mark.parametrize(("args", "message"), [
    (["--teacher", "alfworld/experts"], "unknown ALFWorld teacher"),
    (["--data", "{tmp}/nowhere"], "no ALFWorld data found"),
    (["--workdir", "{tmp}/afile"], "is a file"),
    (["--train-games", "0"], "--train-games"),
    (["--dagger-games", "-1"], "--dagger-games"),
    (["--dagger-max-records", "0"], "--dagger-max-records"),
    (["--eval-games", "100000"], "fewer than the 100000 asked for"),
    (["--base", "local/qwen-typo"], "unknown local model"),
])
def test_bad_input_fails_with_what_to_fix_and_no_traceback(args: list[str], message: str,
                                                           tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    argv = ["loop", "alfworld", "--workdir", str(tmp_path / "loop"),
            *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.split())
    assert "error:" in shown and message in shown, shown
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "loop" / "phases").exists()  # nothing ran


def test_a_distill_run_below_teacher_success_claims_no_saving(scripted: ScriptedLLM,
                                                               tmp_path: Path,
                                                               terminal: io.StringIO) -> None:
    config = LoopConfig(workdir=tmp_path)
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: look"] * n
    scripted.scripts["scripted/student"] = lambda messages, n: ["Action: look"] * n

    def play(mode: str, run: str, won: bool) -> None:
        kd = agentkd.Distiller(teacher="scripted/teacher", student="scripted/student",
                               mode=mode, log=config.log, run=run)
        for task in ("a", "b", "c", "d"):
            with kd.episode_scope(task_id=task, goal="look") as ep:
                kd.completion(messages=[{"role": "user", "content": "Your task is to: look"}])
                ep.finish(success=won)

    play("collect", "collect", True)
    play("teacher", "teacher", True)
    play("student", "distill", False)  # cheaper than the teacher, and it never wins
    done = {"collect": {"run": "collect", "cost_usd": TrajectoryLog(config.log).run_cost(
                "collect")},
            "train": {"student": "scripted/student", "cpu_seconds": 3600.0},
            "dagger": {"student": "scripted/student", "run": None, "cost_usd": 0.0,
                       "cpu_seconds": 0.0},
            "calibrate": {"run": "collect", "cascade": {}, "calibrated": False},
            "distill": {"baseline_run": "teacher", "distill_run": "distill"}}
    said: list[str] = []
    out = report(LoopContext(config, said.append), done)
    body = json.loads((tmp_path / "report.json").read_text())
    versus = body["distill_vs_teacher"]
    assert versus["saving_withheld"] == BELOW_TEACHER == out["saving_withheld"]
    assert versus["break_even_episodes"] is None and versus["saving_per_episode"] is None
    assert versus["relative_cost"] is None
    assert (versus["success_rate"], versus["baseline_success_rate"]) == (0.0, 1.0)
    assert body["one_time_cost"]["train_usd"] == pytest.approx(config.train_usd_per_cpu_hour)
    distill = next(s for s in body["summaries"] if s["run_id"] == "distill")
    assert distill["break_even_episodes"] is None and distill["saving_withheld"] == BELOW_TEACHER
    assert BELOW_TEACHER in " ".join(terminal.getvalue().split())  # the printed table
    assert any(f"no saving or break-even claimed: {BELOW_TEACHER}" in s for s in said)


def test_a_distill_run_at_teacher_success_amortises_collection_and_training(
        scripted: ScriptedLLM, tmp_path: Path, terminal: io.StringIO) -> None:
    config = LoopConfig(workdir=tmp_path, train_usd_per_cpu_hour=1.0)
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: look"] * n
    scripted.scripts["scripted/student"] = lambda messages, n: ["Action: look"] * n
    for mode, run in (("collect", "collect"), ("teacher", "teacher"), ("student", "distill")):
        kd = agentkd.Distiller(teacher="scripted/teacher", student="scripted/student",
                               mode=mode, log=config.log, run=run)
        for task in ("a", "b"):
            with kd.episode_scope(task_id=task, goal="look") as ep:
                kd.completion(messages=[{"role": "user", "content": "Your task is to: look"}])
                ep.finish(success=True)
    log = TrajectoryLog(config.log)
    collect_usd = log.run_cost("collect")
    # A DAgger round: its teacher labels and its training are paid once, like collection's.
    done = {"collect": {"run": "collect", "cost_usd": collect_usd},
            "train": {"student": "scripted/student", "cpu_seconds": 36.0},  # 0.01 CPU-h
            "dagger": {"student": "scripted/student", "run": None, "cost_usd": 0.002,
                       "cpu_seconds": 18.0},
            "calibrate": {"run": "collect", "cascade": {}, "calibrated": False},
            "distill": {"baseline_run": "teacher", "distill_run": "distill"}}
    report(LoopContext(config, lambda _: None), done)
    body = json.loads((tmp_path / "report.json").read_text())
    versus = body["distill_vs_teacher"]
    # The distill run's learning curve: one point per episode served, and its PNG.
    curve = body["learning_curve"]
    assert [p["served"] for p in curve["points"]] == [1, 2]
    assert all(p["mean_teacher_call_rate"] == 0.0 for p in curve["points"])
    assert Path(curve["png"]).read_bytes().startswith(b"\x89PNG")
    saving = (log.run_cost("teacher") - log.run_cost("distill")) / 2
    assert versus["saving_per_episode"] == pytest.approx(saving)
    assert versus["break_even_episodes"] == pytest.approx((collect_usd + 0.002 + 0.015)
                                                          / saving)
    assert body["one_time_cost"]["train_cpu_seconds"] == 54.0


def test_trained_student_names_a_loop_that_has_not_trained_or_whose_student_is_gone(
        tmp_path: Path) -> None:
    with pytest.raises(agentkd.ConfigError, match="holds no trained student"):
        trained_student(tmp_path)
    model = tmp_path / "student" / "merged" / "model.gguf"
    write_marker(tmp_path, Marker("train", "f" * 12, {"base": "local/smollm2-135m"},
                                  {"student": f"local/{model}", "next_action_match": 0.5}, 1.0))
    with pytest.raises(agentkd.ConfigError, match="is gone"):
        trained_student(tmp_path)
    model.parent.mkdir(parents=True)
    model.write_bytes(b"GGUF")
    tuned = trained_student(tmp_path)
    assert (tuned.model, tuned.base, tuned.next_action_match) == (
        f"local/{model}", "local/smollm2-135m", 0.5)
    assert tuned.price == base_price("local/smollm2-135m") and tuned.price[0] > 0
    # After a DAgger round, its student is the loop's, priced as the same base.
    retrained = tmp_path / "student-dagger" / "merged" / "model.gguf"
    retrained.parent.mkdir(parents=True)
    retrained.write_bytes(b"GGUF")
    round_outputs = {"student": f"local/{retrained}", "next_action_match": 0.75}
    write_marker(tmp_path, Marker("dagger", fingerprint({"dagger_games": 4}, "f" * 12),
                                  {"dagger_games": 4}, round_outputs, 1.0))
    tuned = trained_student(tmp_path)
    assert (tuned.model, tuned.base, tuned.next_action_match) == (
        f"local/{retrained}", "local/smollm2-135m", 0.75)
    # A round left from an earlier training (its fingerprint chains to another) is not used.
    write_marker(tmp_path, Marker("dagger", fingerprint({"dagger_games": 4}, "e" * 12),
                                  {"dagger_games": 4}, round_outputs, 1.0))
    assert trained_student(tmp_path).model == f"local/{model}"
    # A student of the reference agent's earlier prompt layout would play a prompt it never saw.
    write_marker(tmp_path, Marker("collect", "c" * 12, {"teacher": "alfworld/rescue"}, {}, 1.0))
    with pytest.raises(agentkd.ConfigError, match="learnt the reference agent's prompt layout 1"):
        trained_student(tmp_path)
    write_marker(tmp_path, Marker("collect", "c" * 12, {"agent_prompt": PROMPT_VERSION}, {}, 1.0))
    assert trained_student(tmp_path).model == f"local/{model}"


def test_the_demo_refuses_a_loop_folder_without_a_student_before_playing(
        tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path / "demo"),
                                      "--student-from", str(tmp_path / "no-loop")])
    assert result.exit_code == 2 and "holds no trained student" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "demo").exists()


def test_every_run_of_the_tuned_student_carries_its_price_to_the_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Worker processes start without the parent's price registrations: the bench config of
    each run names the student's price, also once this process already knows it."""
    from agentkd.envs import cli as bench_cli
    from agentkd.loop.alfworld import _play

    seen: list[Any] = []

    def run_with_progress(config: Any, title: str, **_: Any) -> str:
        seen.append(config)
        for model, price in config.prices.items():  # as a run in this process does
            agentkd.register_price(model, *price)
        return "run"

    monkeypatch.setattr(bench_cli, "run_with_progress", run_with_progress)
    student = f"local/{tmp_path / 'student.gguf'}"
    ctx = LoopContext(LoopConfig(workdir=tmp_path, workers=2), lambda _: None)
    for _ in range(2):  # the second run: the first registered the price in this process
        _play(ctx, "distill", mode="distill", student=student, episodes=1)
    assert [(c.workers, c.prices) for c in seen] == [
        (2, {student: base_price("local/smollm2-135m")})] * 2


SMOLLM = "local/smollm2-135m"


@pytest.mark.slow  # real ALFWorld games, a real LoRA run of SmolLM2-135M and llama.cpp
def test_the_real_loop_survives_ctrl_c_and_a_rerun_skips_finished_phases(
        tmp_path: Path) -> None:
    require(importable("trl"), "the loop trains: pip install 'agentkd[train]'")
    workdir = tmp_path / "loop"
    argv = [sys.executable, "-m", "agentkd.cli", "loop", "alfworld", "--workdir",
            str(workdir), "--train-games", "2", "--val-fraction", "0", "--max-records", "4",
            "--grad-accum", "2", "--save-steps", "1", "--max-length", "512",
            "--dagger-games", "1", "--dagger-max-steps", "3", "--dagger-max-records", "3",
            "--calibrate-games", "1", "--eval-games", "2", "--max-steps", "3", "--samples", "1",
            "--k", "1", "--threads", "1"]
    # One llama.cpp thread: on 2 shared cores a second one only waits for the first.
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "COLUMNS": "200",
           "AGENTKD_LOCAL_N_THREADS": "1"}
    # Ctrl-C reaches the child as it would from a terminal: a shell that started pytest in
    # the background (`pytest &`) leaves SIGINT ignored, and children inherit that.
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                             text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Ctrl-C once training has started (the first two phases wrote their markers).
    deadline = time.monotonic() + 400
    while not (workdir / "phases" / "export.json").is_file():
        assert child.poll() is None, child.communicate()[0]
        assert time.monotonic() < deadline, "collect + export took too long"
        time.sleep(0.5)
    time.sleep(5)
    child.send_signal(signal.SIGINT)
    first, _ = child.communicate(timeout=120)
    assert child.returncode == 130, first
    assert "interrupted during train" in first and "Traceback" not in first, first
    assert not (workdir / "phases" / "train.json").exists()
    log = TrajectoryLog(f"sqlite:///{(workdir / 'loop.db').resolve()}")
    collected = log.episodes(json.loads((workdir / "phases" / "collect.json").read_text())
                             ["outputs"]["run"])
    assert len(collected) == 2

    second = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert "collect: done, skipped" in out and "export: done, skipped" in out
    assert "train: done, skipped" not in out
    assert len(log.episodes(collected[0].run_id)) == 2  # no game collected twice
    body = json.loads((workdir / "report.json").read_text())
    versus = body["distill_vs_teacher"]
    assert versus["baseline_episodes"] == 2 and versus["compared_episodes"] == 2
    assert body["one_time_cost"]["train_cpu_seconds"] > 0
    assert body["student"].startswith("local/") and body["student"].endswith(".gguf")
    # The DAgger round: the tuned student played a further train game with every step
    # labelled by the teacher, and the student the loop distils with trained on the labels.
    dagger = json.loads((workdir / "phases" / "dagger.json").read_text())["outputs"]
    assert "student-dagger-" in body["student"] and dagger["student"] == body["student"]
    labelled = log.steps(log.episodes(dagger["run"])[0].id)
    assert labelled and all(s.teacher_action is not None for s in labelled)
    assert dagger["labels"] == len(labelled) and dagger["cost_usd"] > 0
    assert dagger["run"] in body["runs"]
    assert log.episodes(dagger["run"])[0].task_id not in {e.task_id for e in collected}
    # The baseline and the distill run played the same games under the same step cap.
    runs = {s["mode"]: s for s in body["summaries"]}
    assert runs["teacher"]["teacher"] == runs["distill"]["teacher"] == "alfworld/rescue"

    # A finished loop run again does nothing: no game is played, no marker rewritten.
    markers = {p: (p.read_text(), p.stat().st_mtime_ns) for p in (workdir / "phases").iterdir()}
    played = {run: len(log.episodes(run)) for run in body["runs"]}
    third = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0, third.stdout + third.stderr
    assert all(f"{n}: done, skipped" in third.stdout for n in NAMES), third.stdout
    assert {p: (p.read_text(), p.stat().st_mtime_ns) for p in markers} == markers
    assert {run: len(log.episodes(run)) for run in body["runs"]} == played

    # The demo reuses the student this loop trained, priced as its base, and says so.
    shown = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path / "demo"),
                                     "--train-games", "1", "--games", "1",
                                     "--student-from", str(workdir)])
    assert shown.exit_code == 0, shown.output
    assert f"fine-tuned by `agentkd loop` in {workdir}" in " ".join(shown.output.split())
    demo_log = TrajectoryLog(f"sqlite:///{tmp_path / 'demo' / 'demo.db'}")
    student_calls = [c for s in agentkd.run_summaries(demo_log) if s.mode == "student"
                     for e in demo_log.episodes(s.run_id) for c in demo_log.calls(e.id)]
    assert student_calls and {c.model for c in student_calls} == {body["student"]}
    assert all(c.cost_usd > 0 for c in student_calls)


def test_collect_is_fingerprinted_with_the_agents_prompt_layout(tmp_path: Path) -> None:
    """Data collected under another layout of the agent's prompt is collected again."""
    collect = next(p for p in PHASES if p.name == "collect")
    settings = collect.settings(LoopContext(LoopConfig(workdir=tmp_path), lambda _: None))
    assert settings["agent_prompt"] == PROMPT_VERSION
