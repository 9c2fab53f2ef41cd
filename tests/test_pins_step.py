"""Pins of `Distiller._step`'s decisions over the scripted provider: who acts, which sample
the agent receives, how many requests each mode makes, and the shadow draw.

The shadow test is statistical but exact in what it checks: with share p, each actor's
steps are drawn with probability p, so the share drawn per actor lies within a binomial
bound (a draw of p² for teacher-acted steps, a bug issue 21 found surviving, lies far outside).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

import agentkd

TEACHER, STUDENT = "scripted/teacher", "scripted/student"


def play(kd: agentkd.Distiller, observations: list[str], task: str = "t") -> tuple[list[Any],
                                                                                   str]:
    """One episode, one step per observation; the replies and the episode id."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Your task is to: win"}]
    replies = []
    with kd.episode_scope(task_id=task) as ep:
        for observation in observations:
            messages = [*messages, {"role": "user", "content": observation}]
            reply = kd.completion(messages=messages)
            replies.append(reply)
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        ep.finish(success=True)
    return replies, ep.episode_id


def requests(scripted, model: str) -> list[dict[str, Any]]:
    return [params for m, _, params in scripted.received if m == model]


def distiller(log_url: str, mode: str = "distill", **cascade: Any) -> agentkd.Distiller:
    return agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode=mode, log=log_url,
                             cascade={"sampling": "n", **cascade})


SPLIT = ["Thought: one\nAction: look", "Thought: two\nAction: go to desk 1",
         "Thought: three\nAction: Go to desk 1."]


def test_the_reply_is_the_first_sample_carrying_the_majority(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: SPLIT[:n]
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: take mug 1"] * n
    kd = distiller(log_url, agreement=0.6)
    (reply,), episode = play(kd, ["You see a desk 1."])
    assert reply.choices[0].message.content == "Thought: two\nAction: go to desk 1"
    assert len(reply.choices) == 1 and reply.choices[0].index == 0
    assert reply.choices[0].finish_reason == "stop" and reply.model == TEACHER
    tags = reply._hidden_params["agentkd"]
    assert (tags["actor"], tags["verdict"], tags["agreement"], tags["step"]) == (
        "student", "student", pytest.approx(2 / 3), 0)
    assert requests(scripted, TEACHER) == []  # the teacher was not needed
    (step,) = kd.log.steps(episode)
    assert (step.verdict, step.actor, step.final_action) == ("student", "student", "go to desk 1")
    assert step.agreement == pytest.approx(2 / 3)
    assert [s["group"] for s in step.samples] == [0, 1, 1]
    assert [s["action"] for s in step.samples] == ["look", "go to desk 1", "go to desk 1"]
    assert step.signals["chosen"] == 1 and step.signals["repeat"] is False
    assert (step.shadow, step.teacher_action, step.student_correct) == (False, None, None)


def test_disagreement_below_the_threshold_defers_to_the_teacher(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: SPLIT[:n]
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: take mug 1"] * n
    kd = distiller(log_url)  # unanimity
    (reply,), episode = play(kd, ["You see a desk 1."])
    assert reply.choices[0].message.content == "Action: take mug 1"
    assert reply._hidden_params["agentkd"]["verdict"] == "deferred"
    assert [p["n"] for p in requests(scripted, STUDENT)] == [3]
    assert len(requests(scripted, TEACHER)) == 1
    (step,) = kd.log.steps(episode)
    assert (step.verdict, step.actor, step.final_action) == ("deferred", "teacher", "take mug 1")
    assert step.agreement == pytest.approx(2 / 3)
    calls = kd.log.calls(episode)
    assert [(c.role, c.n) for c in calls] == [("student", 3), ("teacher", 1)]
    (ep,) = kd.log.episodes(kd.run_id)
    assert ep.cost_usd == pytest.approx(sum(c.cost_usd for c in calls), rel=1e-12)
    assert (ep.n_steps, ep.teacher_steps) == (1, 1)


def test_equivalent_given_to_the_distiller_decides_agreement(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: [
        "Action: go to the desk", "Action: go to desk", "Action: go to desk"][:n]
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           cascade={"sampling": "n"},
                           equivalent=lambda a, b: a.replace("the ", "") == b.replace("the ", ""))
    (reply,), episode = play(kd, ["You see a desk 1."])
    assert reply.choices[0].message.content == "Action: go to the desk"
    (step,) = kd.log.steps(episode)
    assert (step.verdict, step.agreement) == ("student", 1.0)


@pytest.mark.parametrize("sampling", ["n", "parallel"])
def test_distill_samples_the_student_as_configured(scripted, log_url, sampling):
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           cascade={"sampling": sampling, "samples": 4, "temperature": 0.3})
    (reply,), episode = play(kd, ["o1"])
    sent = requests(scripted, STUDENT)
    assert [p.get("n") for p in sent] == ([4] if sampling == "n" else [None] * 4)
    assert all(p["temperature"] == 0.3 for p in sent)
    (step,) = kd.log.steps(episode)
    assert (step.verdict, step.agreement, len(step.samples)) == ("student", 1.0, 4)


@pytest.mark.parametrize("mode", ["student", "icd"])
def test_student_and_icd_modes_take_one_sample_and_always_act(scripted, log_url, tmp_path,
                                                              mode):
    from agentkd.retrieval import DemoStore

    scripted.scripts[STUDENT] = lambda messages, n: ["Action: look", "Action: other"][:n]
    store = DemoStore.open(tmp_path / "demos", create=True) if mode == "icd" else None
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode=mode, log=log_url,
                           demos=store, cascade={"sampling": "n", "samples": 5})
    replies, episode = play(kd, ["o1", "o2"])
    assert [r.choices[0].message.content for r in replies] == ["Action: look"] * 2
    assert [p.get("n") for p in requests(scripted, STUDENT)] == [None, None]
    assert requests(scripted, TEACHER) == []
    steps = kd.log.steps(episode)
    assert [(s.verdict, s.actor, s.agreement) for s in steps] == [
        ("student_only", "student", None)] * 2


@pytest.mark.parametrize(("mode", "role"), [("teacher", "teacher"), ("collect", "collect")])
def test_teacher_modes_ask_the_teacher_once_per_step(scripted, log_url, mode, role):
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    kd = distiller(log_url, mode=mode, shadow=1.0)
    _, episode = play(kd, ["o1", "o2"])
    assert len(requests(scripted, TEACHER)) == 2 and requests(scripted, STUDENT) == []
    assert [c.role for c in kd.log.calls(episode)] == [role, role]
    steps = kd.log.steps(episode)
    assert [(s.verdict, s.actor, s.agreement, s.shadow, s.samples) for s in steps] == [
        ("teacher_only", "teacher", None, None, [])] * 2


def test_a_student_without_answers_is_a_student_error(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: []
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    kd = distiller(log_url, agreement=0.1)
    (reply,), episode = play(kd, ["o1"])
    assert reply.choices[0].message.content == "Action: look"
    (step,) = kd.log.steps(episode)
    assert (step.verdict, step.actor, step.agreement) == ("student_error", "teacher", None)


# ---- shadow labels ----------------------------------------------------------------------

def test_shadow_on_an_accepted_step_asks_the_teacher_and_labels_it(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: SPLIT[:n]
    teacher = {"says": "Action: go to desk 1"}
    scripted.scripts[TEACHER] = lambda messages, n: [teacher["says"]] * n
    kd = distiller(log_url, agreement=0.6, shadow=1.0)
    replies, episode = play(kd, ["o1"])
    teacher["says"] = "Action: look"
    more, episode2 = play(kd, ["o1"], task="t2")
    for reply in replies + more:  # the agent still gets the student's answer
        assert reply.choices[0].message.content == SPLIT[1]
    (right,), (wrong,) = kd.log.steps(episode), kd.log.steps(episode2)
    assert (right.shadow, right.teacher_action, right.student_correct) == (
        True, "go to desk 1", True)
    assert [s["teacher_match"] for s in right.samples] == [False, True, True]
    assert (wrong.shadow, wrong.teacher_action, wrong.student_correct) == (True, "look", False)
    assert [s["teacher_match"] for s in wrong.samples] == [True, False, False]
    assert [c.role for c in kd.log.calls(episode)] == ["student", "shadow"]
    assert len(requests(scripted, TEACHER)) == 2


def test_shadow_on_a_deferred_step_labels_it_from_the_teachers_answer(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: SPLIT[:n]
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: Look."] * n
    kd = distiller(log_url, shadow=1.0)
    _, episode = play(kd, ["o1"])
    (step,) = kd.log.steps(episode)
    assert (step.verdict, step.shadow, step.teacher_action, step.student_correct) == (
        "deferred", True, "look", False)  # the majority was 'go to desk 1'
    assert [s["teacher_match"] for s in step.samples] == [True, False, False]
    assert [c.role for c in kd.log.calls(episode)] == ["student", "teacher"]  # no extra call


def test_a_teacher_answer_without_an_action_gives_no_label(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: SPLIT[:n]
    scripted.scripts[TEACHER] = lambda messages, n: ["..."] * n
    kd = distiller(log_url, shadow=1.0)
    _, episode = play(kd, ["o1"])
    (step,) = kd.log.steps(episode)
    assert (step.shadow, step.teacher_action, step.student_correct) == (True, None, None)
    assert all("teacher_match" not in s for s in step.samples)


def test_without_shadow_no_step_is_labelled(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: SPLIT[:n]
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    kd = distiller(log_url, agreement=0.6)
    _, episode = play(kd, ["o1", "o2"])
    assert [(s.shadow, s.student_correct) for s in kd.log.steps(episode)] == [(False, None)] * 2
    assert "shadow" not in {c.role for c in kd.log.calls(episode)}


@pytest.mark.parametrize("share", [0.5, 0.3])
def test_the_shadow_draw_takes_each_actors_steps_with_the_configured_share(
        scripted, log_url, share):
    # Even observations: the student agrees (it acts); odd ones: it splits (the teacher acts).
    def student(messages, n):
        if int(messages[-1]["content"].split()[-1]) % 2 == 0:
            return ["Action: look"] * n
        return SPLIT[:n]

    scripted.scripts[STUDENT] = student
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    kd = distiller(log_url, shadow=share, shadow_seed=20261201)
    per_actor = 120
    _, episode = play(kd, [f"observation {i}" for i in range(2 * per_actor)])
    steps = kd.log.steps(episode)
    bound = 3.5 * math.sqrt(share * (1 - share) / per_actor)  # 3.5 sigma of a binomial share
    for actor in ("student", "teacher"):
        drawn = [s.shadow for s in steps if s.actor == actor]
        assert len(drawn) == per_actor
        assert abs(sum(drawn) / per_actor - share) <= bound, (actor, sum(drawn))
    # Every drawn student step cost one shadow request; drawn teacher steps none.
    shadow_calls = [c for c in kd.log.calls(episode) if c.role == "shadow"]
    assert len(shadow_calls) == sum(1 for s in steps if s.shadow and s.actor == "student")


def test_the_shadow_draw_is_reproducible_from_its_seed(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: look"] * n
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    draws = []
    for run in ("a", "b"):
        kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                               run=run, cascade={"sampling": "n", "shadow": 0.5,
                                                 "shadow_seed": 7})
        _, episode = play(kd, [f"o {i}" for i in range(20)], task=run)
        draws.append([s.shadow for s in kd.log.steps(episode)])
    import random

    draw = random.Random(7)
    assert draws[0] == draws[1] == [draw.random() < 0.5 for _ in range(20)]


# ---- what the first pins left unpinned (mutation testing of Distiller._step) --------------

def test_each_logged_sample_keeps_its_text_action_and_group(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: SPLIT[:n]
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: take mug 1"] * n
    kd = distiller(log_url, agreement=0.6)
    _, episode = play(kd, ["You see a desk 1."])
    (step,) = kd.log.steps(episode)
    assert step.samples == [
        {"content": SPLIT[0], "tool_calls": None, "action": "look", "group": 0,
         "logprob": None, "demo_match": None, "valid": True},
        {"content": SPLIT[1], "tool_calls": None, "action": "go to desk 1", "group": 1,
         "logprob": None, "demo_match": None, "valid": True},
        {"content": SPLIT[2], "tool_calls": None, "action": "go to desk 1", "group": 1,
         "logprob": None, "demo_match": None, "valid": True}]


def test_the_shadow_label_uses_the_distillers_own_extractor(scripted, log_url):
    # An agent whose actions are the text after "Do:"; the default extractor would read the
    # whole last line, so a shadow label with it would never match the student's action.
    def extractor(message: dict[str, Any]) -> str | None:
        content = message.get("content") or ""
        return content.rsplit("Do:", 1)[-1].strip() or None

    scripted.scripts[STUDENT] = lambda messages, n: ["plan. Do: open box"] * n
    scripted.scripts[TEACHER] = lambda messages, n: ["other plan. Do: open box"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           extractor=extractor, cascade={"sampling": "n", "shadow": 1.0})
    _, episode = play(kd, ["A box."])
    (step,) = kd.log.steps(episode)
    assert (step.actor, step.teacher_action, step.student_correct) == (
        "student", "open box", True)


def test_student_kwargs_reach_every_student_request(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           cascade={"sampling": "n"}, student_kwargs={"max_tokens": 7})
    play(kd, ["A room.", "Another room."])
    assert [p.get("max_tokens") for p in requests(scripted, STUDENT)] == [7, 7]
