"""The Distiller end to end over a scripted provider: interception, gate, costs, log."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

import litellm
import pytest

import agentkd
from agentkd.log import LLMCall

TEACHER, STUDENT = "scripted/teacher", "scripted/student"


@dataclass
class Task:
    id: str
    goal: str


def agent_loop(task: Task, steps: int = 3) -> list[str]:
    """A user's agent: knows nothing of agentkd, calls litellm.completion on the teacher."""
    messages = [{"role": "system", "content": "You act in a text world."},
                {"role": "user", "content": f"Your task is to: {task.goal}"}]
    actions = []
    for i in range(steps):
        reply = litellm.completion(model=TEACHER, messages=messages)
        text = reply.choices[0].message.content
        actions.append(text)
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"observation {i}"}]
    return actions


def test_distill_accepts_unanimous_student_and_defers_on_disagreement(scripted, log_url):
    # The student agrees with itself on the first step only; later steps split 2-1.
    def student(messages, n):
        if messages[-1]["content"].startswith("Your task"):
            return ["Think.\nAction: go to desk 1"] * n
        return ["Action: open drawer 1", "Action: open drawer 1", "Action: look"][:n]

    scripted.scripts[STUDENT] = student
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: take mug 1"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           demos=_empty_store(log_url), cascade={"sampling": "n"})
    solve = kd.episode(task_id=lambda task: task.id, success=lambda actions: True)(agent_loop)

    actions = solve(Task("t1", "put a mug on the desk"))

    assert actions == ["Think.\nAction: go to desk 1", "Action: take mug 1", "Action: take mug 1"]
    (episode,) = kd.log.episodes(kd.run_id)
    assert (episode.status, episode.success, episode.n_steps, episode.teacher_steps) == (
        "success", True, 3, 2)
    steps = kd.log.steps(episode.id)
    assert [s.verdict for s in steps] == ["student", "deferred", "deferred"]
    assert [s.agreement for s in steps] == [1.0, pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert steps[1].samples[2]["action"] == "look"
    # Exactly the calls that happened: 3 student requests with n=3, 2 teacher requests.
    calls = kd.log.calls(episode.id)
    assert [(c.role, c.model, c.n) for c in calls] == [
        ("student", STUDENT, 3), ("student", STUDENT, 3), ("teacher", TEACHER, 1),
        ("student", STUDENT, 3), ("teacher", TEACHER, 1)]
    student_requests = [r for r in scripted.received if r[0] == STUDENT]
    assert len(student_requests) == 3 and all(r[2]["n"] == 3 for r in student_requests)
    assert all(r[2]["temperature"] == 0.1 for r in student_requests)
    # Whitespace words: the prompt grows by each answer and observation; the student's n=3
    # request bills its prompt once and its three answers.
    assert [(c.prompt_tokens, c.completion_tokens) for c in calls] == [
        (16, 18), (24, 10), (24, 4), (30, 10), (30, 4)]
    for call in calls:
        price = (10.0, 20.0) if call.model == TEACHER else (1.0, 2.0)
        expected = (call.prompt_tokens * price[0] + call.completion_tokens * price[1]) / 1e6
        assert call.cost_usd == pytest.approx(expected)
    assert episode.cost_usd == pytest.approx(sum(c.cost_usd for c in calls))
    # Each step logs only the turns that are new since the previous step.
    assert len(steps[0].new_messages) == 2 and len(steps[1].new_messages) == 2


def _empty_store(log_url: str) -> agentkd.retrieval.DemoStore:  # type: ignore[name-defined]
    from pathlib import Path

    from agentkd.retrieval import DemoStore

    folder = Path(log_url.removeprefix("sqlite:///")).parent / "demos"
    return DemoStore.open(folder, create=True)


def test_calls_to_other_models_and_outside_scopes_pass_through(scripted, log_url):
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: teacher"] * n
    scripted.scripts["scripted/other"] = lambda messages, n: ["other"] * n
    agentkd.register_price("scripted/other", 1, 1)
    kd = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url)
    msgs = [{"role": "user", "content": "hi"}]
    with kd.episode_scope(task_id="a") as ep:
        other = litellm.completion(model="scripted/other", messages=msgs)
        served = litellm.completion(model=TEACHER, messages=msgs)
        ep.finish(success=False)
    outside = litellm.completion(model=TEACHER, messages=msgs)
    assert other.choices[0].message.content == "other"
    assert served._hidden_params["agentkd"]["actor"] == "teacher"
    assert "agentkd" not in outside._hidden_params
    (episode,) = kd.log.episodes(kd.run_id)
    assert episode.n_steps == 1 and episode.status == "failure"


def test_teacher_and_collect_modes_never_call_the_student(scripted, log_url):
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="teacher", log=log_url)
    kd.episode(task_id=lambda t: t.id)(agent_loop)(Task("x", "g"))
    assert {r[0] for r in scripted.received} == {TEACHER}
    (summary,) = agentkd.run_summaries(kd.log)
    assert summary.teacher_call_rate == 1.0 and summary.relative_cost == 1.0


def test_student_error_defers_to_teacher_and_is_logged(scripted, log_url):
    def broken(messages, n):
        raise litellm.APIConnectionError(message="connection reset by peer",
                                         llm_provider="scripted", model=STUDENT)

    scripted.scripts[STUDENT] = broken
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           demos=_empty_store(log_url))
    with kd.episode_scope(task_id="e") as ep:
        reply = kd.completion(messages=[{"role": "user", "content": "go"}])
        ep.finish(success=True)
    assert reply.choices[0].message.content == "Action: look"
    (step,) = kd.log.steps(ep.episode_id)
    assert step.verdict == "student_error" and step.actor == "teacher"
    errors = [c.error for c in kd.log.calls(ep.episode_id) if c.role == "student"]
    assert errors and "connection reset" in errors[0]


def test_teacher_error_raises_clear_error_and_keeps_the_log(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: a", "Action: b", "Action: c"][:n]

    def down(messages, n):
        raise litellm.ServiceUnavailableError(message="503 upstream down",
                                              llm_provider="scripted", model=TEACHER)

    scripted.scripts[TEACHER] = down
    # One n=3 request, so the three samples disagree. With "auto" (supports_n is False for
    # the scripted provider) this test alone sent three n=1 requests that all said "a", the
    # step was accepted and nothing raised; it passed in the full suite only through state
    # earlier tests left behind.
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           demos=_empty_store(log_url), teacher_retries=0,
                           cascade={"sampling": "n"})
    msgs = [{"role": "user", "content": "go"}]
    with pytest.raises(agentkd.TeacherError, match="503 upstream down"), \
            kd.episode_scope(task_id="e"):
        kd.completion(messages=msgs)
    (episode,) = kd.log.episodes(kd.run_id)
    assert episode.status == "error" and "TeacherError" in episode.error
    calls = kd.log.calls(episode.id)
    assert [c.role for c in calls] == ["student", "teacher"]
    assert calls[1].error and episode.cost_usd == pytest.approx(calls[0].cost_usd)


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"content": "x"}], "role None"),
    ([{"role": "wizard", "content": "x"}], "role 'wizard'"),
    ([{"role": "user"}], "no 'content'"),
    ([{"role": "user", "content": 5}], "string or a list"),
])
def test_malformed_messages_get_clear_errors(scripted, log_url, messages, match):
    kd = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url)
    with pytest.raises(agentkd.InputError, match=match):
        kd.completion(messages=messages)


def test_bad_configuration_is_rejected_with_the_fix(log_url):
    with pytest.raises(agentkd.ConfigError, match="unknown mode 'fast'"):
        agentkd.Distiller(teacher=TEACHER, mode="fast", log=log_url)
    with pytest.raises(agentkd.InputError, match="needs a student"):
        agentkd.Distiller(teacher=TEACHER, mode="distill", log=log_url)
    with pytest.raises(agentkd.ConfigError, match="samples"):
        agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url, cascade={"samples": 0})
    with pytest.raises(agentkd.ConfigError, match="SQLAlchemy URL"):
        agentkd.Distiller(teacher=TEACHER, mode="teacher", log="not a url")
    with pytest.raises(agentkd.InputError, match="demos="):
        agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="icd", log=log_url)


def test_student_without_parsable_action_defers(scripted, log_url):
    scripted.scripts[STUDENT] = lambda messages, n: [""] * n
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           demos=_empty_store(log_url))
    with kd.episode_scope(task_id="e") as ep:
        kd.completion(messages=[{"role": "user", "content": "go"}])
    (step,) = kd.log.steps(ep.episode_id)
    assert step.verdict == "deferred" and step.agreement == 0.0


@pytest.mark.parametrize("defer_loops", [False, True])
def test_defer_loops_sends_the_teacher_in_when_the_student_goes_round_in_circles(
        scripted, log_url, defer_loops):
    # A unanimous student that answers 'go to desk 1' whatever it sees, in a room where that
    # leads back to the same observation.
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: go to desk 1"] * n
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: open drawer 1"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           demos=_empty_store(log_url), cascade={"defer_loops": defer_loops})
    messages = [{"role": "user", "content": "Your task is to: find a mug"}]
    with kd.episode_scope(task_id="loop") as ep:
        for observation in ["On the desk 1, you see nothing.", "On the desk 1, you see nothing.",
                            "The drawer 1 is open.", "On the desk 1, you see nothing."]:
            messages = [*messages, {"role": "user", "content": observation}]
            kd.completion(messages=messages)
    steps = kd.log.steps(ep.episode_id)
    assert [s.signals["repeat"] for s in steps] == [False, True, False, True]
    expected = ["student", "deferred", "student", "deferred"] if defer_loops else ["student"] * 4
    assert [s.verdict for s in steps] == expected


def test_concurrent_episodes_on_threads_and_asyncio_never_mix(scripted, log_url):
    # Each episode's student echoes its own goal, so cross-talk would show in the log.
    def echo(messages, n):
        goal = messages[1]["content"].removeprefix("Your task is to: ")
        return [f"Action: work on {goal}"] * n

    scripted.scripts[STUDENT] = echo
    scripted.scripts[TEACHER] = echo
    # "parallel": three concurrent single requests per step instead of one request with n=3.
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           demos=_empty_store(log_url), cascade={"sampling": "parallel"})
    solve = kd.episode(task_id=lambda t: t.id, goal=lambda t: t.goal)(agent_loop)

    @kd.episode(task_id=lambda t: t.id, goal=lambda t: t.goal)
    async def solve_async(task: Task) -> None:
        messages = [{"role": "system", "content": "s"},
                    {"role": "user", "content": f"Your task is to: {task.goal}"}]
        for i in range(3):
            reply = await litellm.acompletion(model=TEACHER, messages=messages)
            messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                         {"role": "user", "content": f"obs {i}"}]
            await asyncio.sleep(0)

    threads = [threading.Thread(target=solve, args=(Task(f"th{i}", f"goal th{i}"),))
               for i in range(8)]
    for t in threads:
        t.start()

    async def main() -> None:
        await asyncio.gather(*(solve_async(Task(f"as{i}", f"goal as{i}")) for i in range(8)))

    asyncio.run(main())
    for t in threads:
        t.join()
    episodes = kd.log.episodes(kd.run_id)
    assert len(episodes) == 16
    for episode in episodes:
        steps = kd.log.steps(episode.id)
        assert len(steps) == 3 and episode.status == "done"
        assert {s.final_action for s in steps} == {f"work on goal {episode.task_id}"}
    with kd.log.session() as s:
        # Every step: 3 single student requests, no teacher (the student always agrees).
        assert s.query(LLMCall).filter(LLMCall.n == 1, LLMCall.role == "student").count() == 144
        assert s.query(LLMCall).count() == 144


def test_scope_goal_refines_the_default_key_but_a_custom_key_wins(log_url):
    from agentkd.retrieval import StepKey

    messages = [{"role": "user", "content": "Welcome! Your task is to: heat an egg"},
                {"role": "assistant", "content": "Action: look"},
                {"role": "user", "content": "You see a microwave."}]
    kd = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url)
    with kd.episode_scope(task_id="k", goal="heat an egg") as scope:
        key = kd.key_for(scope, messages)
    assert (key.goal, key.observation) == ("heat an egg", "You see a microwave.")

    custom = agentkd.Distiller(teacher=TEACHER, mode="teacher", log=log_url,
                               key=lambda msgs: StepKey(goal="mine", observation="obs"))
    with custom.episode_scope(task_id="k2", goal="heat an egg") as scope:
        assert custom.key_for(scope, messages) == StepKey(goal="mine", observation="obs")


def _two_step_task(kd: agentkd.Distiller, task_id: str, success: bool) -> None:
    messages = [{"role": "user", "content": f"Your task is to: solve {task_id}"}]
    with kd.episode_scope(task_id=task_id, goal=f"solve {task_id}") as ep:
        for observation in ("You see a desk 1.", "On the desk 1, you see a mug 1."):
            messages = [*messages, {"role": "user", "content": observation}]
            kd.completion(messages=messages)
        ep.finish(success=success)


def _split_then_unanimous(messages, n):
    """Disagrees on the first observation (the teacher acts), agrees on the second."""
    if messages[-1]["content"] == "You see a desk 1.":
        return ["Action: go to desk 1", "Action: look", "Action: go to desk 1"][:n]
    return ["Action: take mug 1 from desk 1"] * n


def test_distill_without_a_store_starts_cold_logs_and_defers(scripted, log_url):
    scripted.scripts[STUDENT] = _split_then_unanimous
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: go to desk 1"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           cascade={"sampling": "n"})
    assert kd.demos is None
    _two_step_task(kd, "cold", success=True)
    (episode,) = kd.log.episodes(kd.run_id)
    steps = kd.log.steps(episode.id)
    assert [(s.verdict, s.actor) for s in steps] == [("deferred", "teacher"),
                                                      ("student", "student")]
    assert all(s.demo_ids == [] and s.demo_block is None for s in steps)
    # Zero-shot: the student saw the agent's own messages, no demo block.
    student_prompts = [r[1] for r in scripted.received if r[0] == STUDENT]
    assert all("expert" not in str(m) for m in student_prompts)
    assert [c.role for c in kd.log.calls(episode.id)] == ["student", "teacher", "student"]


def test_a_student_unanimous_on_an_invalid_action_is_deferred(scripted, log_url):
    # Both steps unanimous; the second step's action is not one the world can take now.
    scripted.scripts[STUDENT] = lambda messages, n: (
        ["Action: go to desk 1"] * n if messages[-1]["content"] == "You see a desk 1."
        else ["Action: fly to the moon"] * n)
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: take mug 1 from desk 1"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           cascade={"sampling": "n"},
                           valid=lambda action: not action.startswith("fly"))
    _two_step_task(kd, "invalid", success=True)
    (episode,) = kd.log.episodes(kd.run_id)
    steps = kd.log.steps(episode.id)
    assert [(s.verdict, s.agreement, s.final_action) for s in steps] == [
        ("student", 1.0, "go to desk 1"), ("deferred", 0.0, "take mug 1 from desk 1")]
    assert [(x["action"], x["group"], x["valid"]) for x in steps[1].samples] == [
        ("fly to the moon", None, False)] * 3
    assert [x["valid"] for x in steps[0].samples] == [True] * 3


@pytest.mark.parametrize("hook", ["equivalent", "valid"])
def test_a_gate_hook_that_is_not_a_function_is_refused_up_front(log_url, hook):
    with pytest.raises(agentkd.InputError, match=f"{hook} must be a function of actions "
                                                 f"\\(or None\\), got list"):
        agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                          **{hook: ["go to desk 1"]})


@pytest.mark.parametrize(("repeats", "verdicts"), [
    (None, ["student", "student", "student", "student"]),
    (2, ["student", "student", "deferred", "deferred"]),  # taken twice: the teacher's now
    (1, ["student", "deferred", "deferred", "deferred"]),
])
def test_defer_repeats_defers_an_action_taken_that_often_on_any_observation(
        scripted, log_url, repeats, verdicts):
    # A student fixed on one place: every observation is new, so defer_loops never fires.
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: go to desk 1"] * n
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: take mug 1"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           cascade={"sampling": "n", "defer_loops": True,
                                    "defer_repeats": repeats})
    solve = kd.episode(task_id=lambda task, steps: task.id,
                       success=lambda actions: True)(agent_loop)
    solve(Task("fixed", "put a mug on the desk"), 4)
    (episode,) = kd.log.episodes(kd.run_id)
    steps = kd.log.steps(episode.id)
    assert [s.verdict for s in steps] == verdicts
    # What the step saw: how often its agreed action had been taken before it.
    taken, seen = [], 0
    for s in steps:
        taken.append(seen)
        seen += s.final_action == "go to desk 1"
    assert [s.signals["taken"] for s in steps] == taken
    assert not any(s.signals["repeat"] for s in steps)


def test_grow_demos_adds_the_teacher_steps_of_successful_episodes_once(scripted, log_url,
                                                                      tmp_path):
    from agentkd.retrieval import DemoStore

    scripted.scripts[STUDENT] = _split_then_unanimous
    scripted.scripts[TEACHER] = lambda messages, n: ["Thought: desk first.\nAction: go to "
                                                     "desk 1"] * n
    folder = tmp_path / "grown"  # does not exist yet: grow_demos creates it
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           demos=folder, grow_demos=True, run="grow", cascade={"sampling": "n"})
    assert kd.demos is not None and len(kd.demos) == 0
    _two_step_task(kd, "won", success=True)
    _two_step_task(kd, "lost", success=False)
    assert len(kd.demos) == 1  # the failed episode added nothing
    (demo_source,) = kd.demos.sources()
    won = next(e for e in kd.log.episodes("grow") if e.task_id == "won")
    assert demo_source == f"grow#{won.id}"
    # Only the teacher's step of the won episode: its observation, action and reasoning.
    _, _, demo_step = kd.demos.step(0)
    assert (demo_step.observation, demo_step.action, demo_step.reasoning) == (
        "You see a desk 1.", "go to desk 1", "desk first.")
    kd.close()

    # The next episode retrieves what the store grew.
    _two_step_task(kd, "third", success=True)
    third = next(e for e in kd.log.episodes("grow") if e.task_id == "third")
    assert kd.log.steps(third.id)[0].demo_ids == [0]

    # A process killed between finishing an episode and adding its demo...
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    kd.demos.add = killed  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        _two_step_task(kd, "fourth", success=True)
    kd.demos.close()
    with DemoStore.open(folder) as store:
        assert len(store.sources()) == 2
    # ...is caught up when the run resumes, and nothing is added twice.
    for _ in range(2):
        resumed = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill",
                                    log=log_url, demos=folder, grow_demos=True, run="grow")
        assert resumed.demos is not None and len(resumed.demos.sources()) == 3
        resumed.demos.close()


def test_grow_demos_all_keeps_the_accepted_student_steps_too(scripted, log_url, tmp_path):
    scripted.scripts[STUDENT] = _split_then_unanimous
    scripted.scripts[TEACHER] = lambda messages, n: ["Action: go to desk 1"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           demos=tmp_path / "all", grow_demos="all", cascade={"sampling": "n"})
    _two_step_task(kd, "won", success=True)
    assert kd.demos is not None
    assert [kd.demos.step(row)[2].action for row in range(2)] == [
        "go to desk 1", "take mug 1 from desk 1"]


def test_grow_demos_is_refused_where_it_cannot_grow(log_url, tmp_path):
    with pytest.raises(agentkd.InputError, match="needs a store to grow"):
        agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                          grow_demos=True)
    with pytest.raises(agentkd.InputError, match="collect mode already"):
        agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="icd", log=log_url,
                          demos=tmp_path / "d", grow_demos=True)
    with pytest.raises(agentkd.InputError, match="True, 'teacher' or 'all'"):
        agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                          demos=tmp_path / "d", grow_demos="some")
