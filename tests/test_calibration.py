"""Shadow mode, agreement signals and `agentkd calibrate` (issue 8)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import litellm
import pytest
from litellm import CustomLLM
from litellm.types.utils import (
    ChatCompletionTokenLogprob,
    ChoiceLogprobs,
    Choices,
    Message,
    ModelResponse,
    Usage,
)
from sqlalchemy import text
from typer.testing import CliRunner

import agentkd
from agentkd.cascades import Gate
from agentkd.cascades.calibration import (
    CalibrationError,
    LabelledStep,
    StudentCall,
    Variant,
    calibrate,
    calibrate_log,
    min_accepted,
)
from agentkd.cascades.signals import action_logprob, group_actions, step_signals
from agentkd.cli import app
from agentkd.config import AcceptanceRule, load_cascade, save_cascade
from agentkd.log import StepRecord, TrajectoryLog
from agentkd.report import run_summaries
from agentkd.retrieval import DemoEpisode, DemoStep, DemoStore

TEACHER, STUDENT, LP_STUDENT = "scripted/teacher", "scripted/student", "lp/student"


class LogprobLLM(CustomLLM):
    """A student (`lp/student`) that returns token logprobs: each answer is split into
    words, every word of a sure answer at -0.1 and of an unsure one at -2.0."""

    def __init__(self) -> None:
        super().__init__()
        self.answer: Any = None
        self.asked_logprobs: list[bool] = []

    def completion(self, model: str, messages: list[Any], *args: Any,
                   **kwargs: Any) -> ModelResponse:
        params = kwargs.get("optional_params") or {}
        self.asked_logprobs.append(bool(params.get("logprobs")))
        choices = []
        for i in range(int(params.get("n") or 1)):
            content, value = self.answer(messages, i)
            words = content.split(" ")
            tokens = [w + (" " if j < len(words) - 1 else "") for j, w in enumerate(words)]
            choices.append(Choices(
                index=i, finish_reason="stop",
                message=Message(role="assistant", content=content),
                logprobs=ChoiceLogprobs(content=[
                    ChatCompletionTokenLogprob(token=t, logprob=value, bytes=None,
                                               top_logprobs=[]) for t in tokens])))
        return ModelResponse(model=model, choices=choices,
                             usage=Usage(prompt_tokens=10, completion_tokens=5 * len(choices),
                                         total_tokens=0))

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)


_lp = LogprobLLM()
litellm.custom_provider_map = [
    *[p for p in litellm.custom_provider_map if p["provider"] != "lp"],
    {"provider": "lp", "custom_handler": _lp},
]
agentkd.register_price(LP_STUDENT, 1.0, 2.0)


def agent_loop(kd: agentkd.Distiller, goal: str, steps: int) -> list[str]:
    """A user's agent loop: calls the teacher through litellm, unaware of agentkd."""
    messages = [{"role": "user", "content": f"Your task is to: {goal}"}]
    replies = []
    with kd.episode_scope(task_id=goal, goal=goal) as scope:
        for i in range(steps):
            reply = litellm.completion(model=TEACHER, messages=messages)
            content = reply.choices[0].message.content
            replies.append(content)
            messages += [{"role": "assistant", "content": content},
                         {"role": "user", "content": f"observation {i} of {goal}"}]
        scope.finish(success=True)
    return replies


def _student_script(messages: list[dict[str, Any]], n: int) -> list[str]:
    """Deterministic in the prompt: unanimous on even steps, split 2-1 on odd ones."""
    turn = len(messages) // 2
    if turn % 2 == 0:
        return [f"Action: open drawer {turn}"] * n
    return [f"Action: open drawer {turn}", f"Action: open drawer {turn}", "Action: look"][:n]


def _teacher_script(messages: list[dict[str, Any]], n: int) -> list[str]:
    # Agrees with the student on steps divisible by 4 only.
    turn = len(messages) // 2
    return [f"Action: open drawer {turn}" if turn % 4 == 0 else "Action: take mug 1"] * n


def _empty_store(tmp_path: Path) -> DemoStore:
    return DemoStore.open(tmp_path / "demos", create=True)


def test_shadow_mode_never_changes_the_agents_output(scripted, tmp_path):
    scripted.scripts[STUDENT] = _student_script
    scripted.scripts[TEACHER] = _teacher_script
    url = f"sqlite:///{tmp_path / 'log.db'}"
    outputs, logs = {}, {}
    for shadow in (0.0, 0.5, 1.0):
        kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, log=url,
                               run=f"shadow-{shadow}", demos=_empty_store(tmp_path),
                               cascade={"sampling": "n", "shadow": shadow, "shadow_seed": 7})
        outputs[shadow] = [agent_loop(kd, goal, 8) for goal in ("g1", "g2")]
        logs[shadow] = [s for e in kd.log.episodes(kd.run_id) for s in kd.log.steps(e.id)]

    assert outputs[0.5] == outputs[0.0] and outputs[1.0] == outputs[0.0]
    for shadow, steps in logs.items():
        assert [(s.verdict, s.final_action) for s in steps] == [
            (s.verdict, s.final_action) for s in logs[0.0]]
        drawn = [s for s in steps if s.shadow]
        # One draw per step from the seeded generator, whoever acted.
        draw = random.Random(7)
        assert [s.shadow for s in steps] == [draw.random() < shadow for _ in steps]
        assert all(s.teacher_action is not None for s in drawn)
        assert all(s.teacher_action is None and s.student_correct is None
                   for s in steps if not s.shadow)
    # Every step is labelled at 1.0; only accepted ones needed an extra (shadow) call.
    full = logs[1.0]
    assert len([s for s in full if s.shadow]) == len(full) == 16
    with TrajectoryLog(url).session() as s:
        roles = [r for (r,) in s.execute(text(
            "SELECT role FROM llm_calls WHERE run_id = 'shadow-1.0'"))]
    accepted = [s for s in full if s.actor == "student"]
    assert roles.count("shadow") == len(accepted) > 0
    assert roles.count("teacher") == len(full) - len(accepted)
    # The label is judged: the student is right exactly where the teacher agrees.
    for s in full:
        turn = s.idx  # the scripts see 1 + 2·idx messages
        assert s.teacher_action == (f"open drawer {turn}" if turn % 4 == 0 else "take mug 1")
        assert s.student_correct is (turn % 4 == 0)


def test_signals_are_logged_on_every_step(scripted, tmp_path):
    _lp.answer = lambda messages, i: (("Action: go to desk 1", -0.1) if i < 2
                                      else ("Action: look", -2.0))
    store = _empty_store(tmp_path)
    store.add(DemoEpisode(goal="put a mug on the desk", steps=[
        DemoStep(observation="You see a desk 1.", action="go to desk 1"),
        DemoStep(observation="You see a mug 1.", action="take mug 1")]))
    store.flush()
    kd = agentkd.Distiller(teacher=TEACHER, student=LP_STUDENT,
                           log=f"sqlite:///{tmp_path / 'log.db'}", demos=store,
                           cascade={"sampling": "n", "agreement": 0.6})
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: take mug 1"] * n
    _lp.asked_logprobs.clear()
    agent_loop(kd, "put a mug on the desk", 2)
    steps = kd.log.steps(kd.log.episodes(kd.run_id)[0].id)
    assert _lp.asked_logprobs and all(_lp.asked_logprobs)  # "auto" asks where supported
    for step in steps:
        signals = step.signals
        assert signals is not None
        assert signals["majority_share"] == pytest.approx(2 / 3)
        assert signals["distinct_actions"] == 2
        assert signals["mean_logprob"] == pytest.approx(-0.1)
        assert signals["demo_action"] in ("go to desk 1", "take mug 1")
        assert signals["demo_agreement"] == float(signals["demo_action"] == "go to desk 1")
        assert [x["group"] for x in step.samples] == [0, 0, 1]
        assert [x["logprob"] for x in step.samples] == pytest.approx([-0.1, -0.1, -2.0])
        assert step.verdict == "student"
        assert step.shadow is False  # shadow share 0: drawn, never picked


def test_signals_and_gate_with_a_calibrated_rule():
    groups = group_actions(["a", "b", "a", None], lambda x, y: x == y)
    assert groups == [0, 1, 0, None]
    sig = step_signals(groups, [-0.5, -0.1, -0.7, None], [False, True, False, None])
    assert (sig.majority_share, sig.distinct_actions, sig.chosen) == (0.5, 2, 0)
    assert (sig.mean_logprob, sig.demo_agreement) == (-0.5, 0.0)
    assert step_signals([None, None]).value("majority_share") is None
    # The action's tokens count, not the preamble's.
    tokens = [("Sure", -3.0), (". ", -3.0), ("Action: ", -1.0), ("go", -0.2), (" home", -0.4)]
    assert action_logprob(tokens, "Sure. Action: go home", "go home") == pytest.approx(-0.3)
    assert action_logprob(tokens, "Sure. Action: go home", "absent") == pytest.approx(-1.52)
    gate = Gate(AcceptanceRule(signal="mean_logprob", threshold=-0.3))
    assert gate.decide(["a", "a", "b"], [-0.2, -0.9, -0.1]).accept
    assert not gate.decide(["a", "a", "b"], [-0.4, -0.1, -0.1]).accept
    assert not gate.decide(["a", "a", "b"]).accept  # no logprobs: this rule never accepts
    few = Gate(AcceptanceRule(signal="distinct_actions", threshold=2))
    assert few.decide(["a", "b", "a"]).accept and not few.decide(["a", "b", "c"]).accept
    demo = Gate(AcceptanceRule(signal="demo_agreement", threshold=1.0))
    assert demo.decide(["a", "b", "a"], demo_action="a").accept
    assert not demo.decide(["a", "b", "a"], demo_action="b").accept


def _synthetic(count: int, seed: int = 0) -> tuple[list[LabelledStep], dict[str, Variant]]:
    """Labelled steps whose student is right 99% of the time when its action's logprob is
    at least -1.0 and 30% of the time below, while unanimity and the demo say nothing: the
    cheapest rule reaching 95% is mean_logprob >= about -1.0, at one sample."""
    rng = random.Random(seed)
    steps = []
    for _ in range(count):
        value = rng.uniform(-2.0, 0.0)
        right = rng.random() < (0.99 if value >= -1.0 else 0.3)
        groups: list[int | None] = rng.choice([[0, 0, 0], [0, 0, 1], [0, 1, 0]])
        steps.append(LabelledStep(
            run_id="r", groups=groups, logprobs=[value, value - 0.5, value - 0.5],
            demo_matches=[rng.random() < 0.5] * 3,
            teacher_matches=[right, right and groups[1] == 0, right and groups[2] == 0],
            student_calls=[StudentCall("scripted/student", 3, 100, 30, 0.0)],
            teacher_cost=0.01))
    return steps, {"r": Variant(samples=3, temperature=0.1)}


def test_calibration_recovers_the_known_best_threshold():
    steps, variants = _synthetic(1500)
    result = calibrate(steps, variants, target_accuracy=0.95, confidence=0.95,
                       steps_per_episode=10.0, bootstrap=500)
    chosen = result.chosen
    assert chosen is not None
    assert chosen.rule.signal == "mean_logprob"
    assert chosen.rule.threshold == pytest.approx(-1.0, abs=0.1)
    assert chosen.variant.samples == 1  # the signal needs one sample; more only cost
    assert chosen.accuracy_low is not None and chosen.accuracy_low >= 0.95
    accepted = [s for s in steps if s.logprobs[0] >= chosen.rule.threshold]
    assert chosen.accepted == len(accepted)
    assert chosen.accuracy == pytest.approx(
        sum(s.teacher_matches[0] for s in accepted) / len(accepted))
    share = len(accepted) / len(steps)
    assert chosen.teacher_call_rate == pytest.approx(1 - share)
    assert chosen.cost_per_step == pytest.approx(steps[0].student_cost(1) + (1 - share) * 0.01)
    assert chosen.cost_per_episode == pytest.approx(chosen.cost_per_step * 10.0)
    # The paper's rule is evaluated on the same steps; unanimity carries no signal here.
    paper = result.paper_rule
    assert paper is not None and paper.rule.signal == "majority_share"
    assert paper.accuracy is not None and paper.accuracy < 0.8


def test_calibration_prefers_the_cheaper_rule_only_when_it_is_accurate_enough():
    steps, variants = _synthetic(1500)
    strict = calibrate(steps, variants, target_accuracy=0.98, confidence=0.95, bootstrap=500)
    loose = calibrate(steps, variants, target_accuracy=0.7, confidence=0.95, bootstrap=500)
    assert strict.chosen is not None and loose.chosen is not None
    assert loose.chosen.accepted_share > strict.chosen.accepted_share
    assert loose.chosen.cost_per_step < strict.chosen.cost_per_step
    assert (strict.chosen.accuracy_low or 0) >= 0.98 and (loose.chosen.accuracy_low or 0) >= 0.7


def test_too_few_labelled_steps_says_how_many_are_needed():
    assert min_accepted(0.95, 0.95) == 59
    assert min_accepted(0.9, 0.8) == 16
    steps, variants = _synthetic(40)
    with pytest.raises(CalibrationError, match=r"40 shadow steps.*at least 59 labelled steps"):
        calibrate(steps, variants, target_accuracy=0.95, confidence=0.95)
    # Enough steps in all, but too few that any rule accepts correctly.
    steps, variants = _synthetic(100)
    for step in steps:
        step.teacher_matches[:] = [False] * 3
    with pytest.raises(CalibrationError, match="no acceptance rule reaches"):
        calibrate(steps, variants, target_accuracy=0.95, confidence=0.95, bootstrap=200)
    with pytest.raises(agentkd.InputError, match="target accuracy"):
        min_accepted(1.0, 0.95)


def test_cascade_config_round_trips_into_the_distiller(tmp_path, log_url):
    steps, variants = _synthetic(300)
    result = calibrate(steps, variants, target_accuracy=0.95, bootstrap=300)
    cascade = result.cascade()
    path = save_cascade(tmp_path / "cascade.json", cascade, result.summary())
    assert load_cascade(path) == cascade
    assert json.loads(path.read_text())["calibration"]["chosen"]["rule"] == {
        "signal": "mean_logprob", "threshold": cascade.rule.threshold}  # type: ignore[union-attr]
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, log=log_url,
                           demos=_empty_store(tmp_path), cascade=str(path))
    assert kd.cascade == cascade and kd.gate.rule == cascade.rule
    assert agentkd.Cascade.model_validate(cascade.model_dump()) == cascade
    (tmp_path / "bad.json").write_text('{"cascade": {"samples": 0}}')
    with pytest.raises(agentkd.ConfigError, match="samples"):
        load_cascade(tmp_path / "bad.json")
    with pytest.raises(agentkd.ConfigError, match="does not exist"):
        agentkd.Distiller(teacher=TEACHER, student=STUDENT, log=log_url,
                          demos=_empty_store(tmp_path), cascade=str(tmp_path / "nope.json"))


def test_calibrate_command_on_a_shadow_run(scripted, tmp_path):
    """Shadow run → `agentkd calibrate` → config + PNG; the report shows the accuracy."""
    scripted.scripts[STUDENT] = _student_script
    scripted.scripts[TEACHER] = _teacher_script
    url = f"sqlite:///{tmp_path / 'log.db'}"
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, log=url, run="shadowed",
                           demos=_empty_store(tmp_path),
                           cascade={"sampling": "n", "shadow": 1.0})
    for goal in range(6):
        agent_loop(kd, f"goal {goal}", 8)
    (summary,) = run_summaries(TrajectoryLog(url), ["shadowed"])
    # Accepted steps are the unanimous (even-turn) ones; the teacher agrees on every second.
    assert summary.labelled_accepted == 24 and summary.accepted_accuracy == pytest.approx(0.5)

    out = tmp_path / "cascade.json"
    result = CliRunner().invoke(app, ["calibrate", "--log", url, "--run", "shadowed",
                                      "--target-accuracy", "0.9", "--confidence", "0.8",
                                      "--out", str(out), "--bootstrap", "300"])
    assert result.exit_code == 2 and "no acceptance rule reaches" in result.output
    # No config is written, but the curve is shown and saved: it says how far off it is.
    assert not out.exists() and out.with_suffix(".png").exists()
    assert "accepted share vs accepted-step accuracy" in result.output
    result = CliRunner().invoke(app, ["calibrate", "--log", url, "--run", "shadowed",
                                      "--target-accuracy", "0.4", "--confidence", "0.8",
                                      "--out", str(out), "--bootstrap", "300"])
    assert result.exit_code == 0, result.output
    assert "accepted share vs accepted-step accuracy" in result.output
    assert "teacher-call rate" in result.output and "cost per episode" in result.output
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    calibrated = load_cascade(out)
    assert calibrated.rule is not None
    direct = calibrate_log(TrajectoryLog(url), ["shadowed"], target_accuracy=0.4,
                           confidence=0.8, bootstrap=300)
    assert direct.cascade() == calibrated and direct.labelled_steps == 48
    assert direct.steps_per_episode == 8.0
    result = CliRunner().invoke(app, ["calibrate", "--log", url, "--run", "nope"])
    assert result.exit_code == 2 and "no run 'nope'" in result.output


def test_an_old_log_without_the_new_columns_still_opens(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    log = TrajectoryLog(url)
    with log.engine.begin() as conn:
        for column in ("signals", "shadow", "teacher_action", "student_correct"):
            conn.execute(text(f"ALTER TABLE steps DROP COLUMN {column}"))
    log.close()
    log = TrajectoryLog(url)
    log.ensure_run("r", mode="distill", teacher=TEACHER, student=STUDENT)
    episode = log.start_episode("r", "t")
    log.record_step(episode, "r", StepRecord(
        idx=0, prompt_hash="h", new_messages=[], verdict="student", actor="student",
        shadow=True, teacher_action="look", student_correct=True,
        signals={"majority_share": 1.0}), [])
    (step,) = log.steps(episode)
    assert (step.shadow, step.teacher_action, step.student_correct) == (True, "look", True)
    TrajectoryLog(url)  # opening again adds nothing and does not fail


@pytest.mark.slow
def test_local_model_returns_token_logprobs():
    from agentkd import llm

    sampled = llm.sample("local/smollm2-135m", [{"role": "user", "content": "Say hello."}],
                         n=2, temperature=0.1, max_tokens=12, logprobs=True)
    for message, tokens in zip(sampled.messages, sampled.logprobs, strict=True):
        assert tokens and all(value <= 0.0 for _, value in tokens)
        assert message["content"].startswith("".join(t for t, _ in tokens)[:3])
