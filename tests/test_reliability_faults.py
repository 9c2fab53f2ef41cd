"""Provider faults against a real OpenAI-compatible server on 127.0.0.1 (tests/faultserver.py).

litellm talks to the server over loopback HTTP exactly as it would to a provider
(``openai/<model>`` + ``api_base``). Student faults must degrade to the teacher for that step
and be logged with their cause; teacher faults are retried with backoff within
``teacher_retries`` and then raise `agentkd.TeacherError`, with the episode marked 'error' and
every row already written kept.
"""

from __future__ import annotations

import random
from collections import Counter

import litellm
import pytest
from faultserver import FAULTS, FaultServer
from reliability_support import STUDENT, TEACHER, check_log, register_prices

import agentkd

TEACHER_NAME, STUDENT_NAME = TEACHER.split("/", 1)[1], STUDENT.split("/", 1)[1]
MSGS = [{"role": "system", "content": "You act in a text world."},
        {"role": "user", "content": "Your task is to: put a mug on the desk"}]


def responder(model, messages, n):
    if model == TEACHER_NAME:
        return [{"content": "Thought: the teacher knows.\nAction: take mug 1"}] * n
    return [{"content": "Thought: I think so.\nAction: go to desk 1"}] * n


@pytest.fixture(scope="module")
def server():
    register_prices()
    with FaultServer(responder, hang_s=3.0, retry_after=0) as srv:
        yield srv


@pytest.fixture
def srv(server):
    server.reset()
    return server


@pytest.fixture
def fast_backoff(monkeypatch):
    """Keep litellm's backoff policy but shrink its base delay (the backoff test uses the
    real one)."""
    import litellm.utils

    monkeypatch.setattr(litellm.utils, "INITIAL_RETRY_DELAY", 0.01)
    monkeypatch.setattr(litellm.utils, "JITTER", 0.0)


def distiller(srv, log_url, *, mode="distill", store=None, retries=1, sampling="n", **extra):
    kw = {"api_base": srv.url, "api_key": "sk-fault-test-key-000000", "timeout": 1.0}
    return agentkd.Distiller(
        teacher=TEACHER, student=STUDENT if mode != "teacher" else None, mode=mode,
        log=log_url, demos=store, teacher_kwargs=kw, student_kwargs=kw,
        teacher_retries=retries, cascade={"sampling": sampling}, **extra)


@pytest.fixture
def store(tmp_path):
    from agentkd.retrieval import DemoStore

    return DemoStore.open(tmp_path / "demos", create=True)


# ---- student faults: degrade to the teacher --------------------------------------------------

STUDENT_CAUSES = {"timeout": "Timeout", "429": "RateLimitError", "500": "InternalServerError",
                  "503": "ServiceUnavailableError", "reset": "Connection error",
                  "malformed": "InternalServerError", "empty": "EmptyResponse",
                  "echo_auth": "InternalServerError"}


@pytest.mark.parametrize("fault", FAULTS)
def test_student_fault_degrades_to_the_teacher_for_that_step(srv, log_url, store, fault):
    kd = distiller(srv, log_url, store=store)
    srv.plan(STUDENT_NAME, fault)  # only the first student request fails
    with kd.episode_scope(task_id=f"student-{fault}") as ep:
        first = kd.completion(messages=MSGS)
        second = kd.completion(messages=[*MSGS, {"role": "assistant", "content": "x"},
                                         {"role": "user", "content": "obs"}])
        ep.finish(success=True)

    assert first.choices[0].message.content.endswith("take mug 1")  # the teacher answered
    assert second.choices[0].message.content.endswith("go to desk 1")  # the student is back
    steps = kd.log.steps(ep.episode_id)
    calls = kd.log.calls(ep.episode_id)
    assert [s.actor for s in steps] == ["teacher", "student"]
    if fault == "truncated_tool":
        # A well-formed response whose tool call cannot be parsed: no action, so no agreement.
        assert steps[0].verdict == "deferred" and steps[0].agreement == 0.0
        assert all(s["action"] is None and s["tool_calls"] for s in steps[0].samples)
    else:
        assert steps[0].verdict == "student_error"
        (failed,) = [c for c in calls if c.role == "student" and c.step_id == steps[0].id]
        assert failed.error and STUDENT_CAUSES[fault] in failed.error, failed.error
    # A student fault costs one request: no retries before handing the step to the teacher.
    assert srv.requests[STUDENT_NAME] == 2 and srv.requests[TEACHER_NAME] == 1
    assert srv.injected[fault] == 1
    check_log(kd.log, kd.run_id)


def test_a_partial_student_failure_is_never_accepted(srv, log_url, store):
    # Three parallel single requests, one fails: two agreeing samples are not unanimity.
    kd = distiller(srv, log_url, store=store, sampling="parallel")
    srv.plan(STUDENT_NAME, "503")
    with kd.episode_scope(task_id="partial") as ep:
        reply = kd.completion(messages=MSGS)
    assert reply._hidden_params["agentkd"]["actor"] == "teacher"
    (step,) = kd.log.steps(ep.episode_id)
    assert step.verdict == "deferred" and step.agreement == pytest.approx(2 / 3)
    errors = [c.error for c in kd.log.calls(ep.episode_id) if c.role == "student"]
    assert sorted(e is None for e in errors) == [False, True, True]
    check_log(kd.log, kd.run_id)


def test_a_slow_student_is_cut_off_by_its_timeout(srv, log_url, store):
    kd = distiller(srv, log_url, store=store)
    srv.plan(STUDENT_NAME, "timeout")
    with kd.episode_scope(task_id="slow") as ep:
        reply = kd.completion(messages=MSGS)
    assert reply._hidden_params["agentkd"]["verdict"] == "student_error"
    # Cut off once, never retried (a student fault only costs the step its samples), then
    # the teacher answered in one request.
    assert (srv.requests[STUDENT_NAME], srv.requests[TEACHER_NAME]) == (1, 1)
    assert srv.injected == Counter({"timeout": 1})
    student, teacher = kd.log.calls(ep.episode_id)
    assert student.role == "student" and (student.error or "").startswith("Timeout")
    assert teacher.role == "teacher" and teacher.error is None


# ---- teacher faults: retry with backoff, then TeacherError ----------------------------------

TEACHER_RETRIED = [f for f in FAULTS if f != "truncated_tool"]


@pytest.mark.parametrize("fault", TEACHER_RETRIED)
def test_teacher_fault_is_retried_then_raises_and_the_log_keeps_everything(
        srv, log_url, fault, fast_backoff):
    kd = distiller(srv, log_url, mode="teacher", retries=2)
    with pytest.raises(agentkd.TeacherError) as raised, kd.episode_scope(task_id=fault):
        kd.completion(messages=MSGS)  # served
        srv.always(TEACHER_NAME, fault)
        kd.completion(messages=[*MSGS, {"role": "assistant", "content": "a"},
                                {"role": "user", "content": "o"}])
    # Exactly the configured budget: 1 request + 2 retries (litellm's own retries are off).
    assert srv.requests[TEACHER_NAME] == 1 + 3
    assert srv.injected[fault] == 3
    message = str(raised.value)
    assert "fault-teacher" in message and "after 2 retries" in message and "3 attempts" in message
    (episode,) = kd.log.episodes(kd.run_id)
    assert episode.status == "error" and episode.error.startswith("TeacherError")
    (step,) = kd.log.steps(episode.id)  # the served step is kept
    assert step.actor == "teacher"
    failed = [c for c in kd.log.calls(episode.id) if c.error]
    assert len(failed) == 1 and failed[0].step_id is None and failed[0].role == "teacher"
    check_log(kd.log, kd.run_id)


def test_a_truncated_teacher_tool_call_is_passed_through_as_the_teacher_said_it(srv, log_url):
    # The teacher is the reference: agentkd does not rewrite what it says.
    kd = distiller(srv, log_url, mode="teacher")
    srv.plan(TEACHER_NAME, "truncated_tool")
    with kd.episode_scope(task_id="tt") as ep:
        reply = kd.completion(messages=MSGS)
    assert reply.choices[0].message.tool_calls[0].function.arguments == '{"command": "go to desk'
    (step,) = kd.log.steps(ep.episode_id)
    assert step.final_action is None and step.verdict == "teacher_only"


@pytest.mark.parametrize("fault", ["timeout", "429", "503", "reset", "malformed", "empty"])
def test_transient_teacher_faults_are_survived(srv, log_url, fault, fast_backoff):
    kd = distiller(srv, log_url, mode="teacher", retries=1)
    srv.plan(TEACHER_NAME, fault)  # then normal answers
    with kd.episode_scope(task_id=fault) as ep:
        reply = kd.completion(messages=MSGS)
        ep.finish(success=True)
    assert reply.choices[0].message.content.endswith("take mug 1")
    assert srv.requests[TEACHER_NAME] == 2
    (call,) = kd.log.calls(ep.episode_id)
    # 16 prompt words, 8 answer words; an empty answer's prompt was billed too.
    prompt = 16 * (2 if fault == "empty" else 1)
    assert (call.error, call.prompt_tokens, call.completion_tokens) == (None, prompt, 8)
    assert call.cost_usd == pytest.approx((prompt * 10.0 + 8 * 20.0) / 1e6, rel=1e-12)
    check_log(kd.log, kd.run_id)


def test_teacher_fault_after_student_samples_keeps_their_cost(srv, log_url, store, fast_backoff):
    def split(model, messages, n):  # the student disagrees with itself: the teacher is needed
        if model == TEACHER_NAME:
            return responder(model, messages, n)
        return [{"content": f"Action: open drawer {i}"} for i in range(n)]

    srv.responder = split
    try:
        kd = distiller(srv, log_url, store=store, retries=1)
        srv.always(TEACHER_NAME, "503")
        with pytest.raises(agentkd.TeacherError), kd.episode_scope(task_id="paid") as ep:
            kd.completion(messages=MSGS)
        calls = kd.log.calls(ep.episode_id)
        spent = sum(c.cost_usd for c in calls)
        # One n=3 student request (16 prompt words billed once, 3 x 4 answer words at
        # $1/$2 per Mtok), then two failed teacher attempts that returned no usage.
        assert [(c.role, c.prompt_tokens, c.completion_tokens) for c in calls] == [
            ("student", 16, 12), ("teacher", 0, 0)]
        assert spent == pytest.approx((16 * 1.0 + 12 * 2.0) / 1e6, rel=1e-12)
        assert ep.cost_usd == pytest.approx(spent)  # the scope knows it too
        (episode,) = kd.log.episodes(kd.run_id)
        assert episode.cost_usd == pytest.approx(spent) and episode.n_steps == 0
        check_log(kd.log, kd.run_id)
    finally:
        srv.responder = responder


def test_backoff_is_exponential_and_honours_retry_after(srv, log_url):
    kd = distiller(srv, log_url, mode="teacher", retries=2)
    srv.always(TEACHER_NAME, "503")
    with pytest.raises(agentkd.TeacherError), kd.episode_scope(task_id="backoff"):
        kd.completion(messages=MSGS)
    t = srv.times(TEACHER_NAME)
    assert len(t) == 3
    assert t[1] - t[0] >= 0.45 and t[2] - t[1] >= 0.95  # litellm: 0.5 s · 2^k (+ jitter)

    srv.reset()
    srv.retry_after = 2
    try:
        srv.plan(TEACHER_NAME, "429")
        with kd.episode_scope(task_id="retry-after"):
            kd.completion(messages=MSGS)
        t = srv.times(TEACHER_NAME)
        assert len(t) == 2 and t[1] - t[0] >= 1.95  # waited as told, then succeeded
    finally:
        srv.retry_after = 0


def test_agent_retry_kwargs_neither_crash_nor_inflate_the_budget(srv, log_url, fast_backoff):
    kd = distiller(srv, log_url, mode="teacher", retries=1)
    srv.always(TEACHER_NAME, "500")
    with pytest.raises(agentkd.TeacherError), kd.episode_scope(task_id="kw"):
        # The agent's own litellm call, intercepted: it asks for many retries itself.
        litellm.completion(model=TEACHER, messages=MSGS, num_retries=5, max_retries=5)
    assert srv.requests[TEACHER_NAME] == 2


def test_streaming_teacher_calls_get_a_clear_error(srv, log_url):
    kd = distiller(srv, log_url, mode="teacher")
    with pytest.raises(agentkd.InputError, match="stream=True"), kd.episode_scope(task_id="s"):
        litellm.completion(model=TEACHER, messages=MSGS, stream=True)
    assert srv.requests[TEACHER_NAME] == 0


# ---- a campaign: random faults on both sides, counted ----------------------------------------


def test_fault_campaign_counts_injected_and_survived(srv, log_url, store, fast_backoff):
    """Random faults on ~40% of requests. A fault is survived when the agent still got its
    answer; only a teacher failing on every attempt of one step may surface (TeacherError)."""
    rng = random.Random(6)
    kd = distiller(srv, log_url, store=store, retries=2)
    surfaced = served = 0
    for e in range(6):
        try:
            with kd.episode_scope(task_id=f"campaign-{e}") as ep:
                messages = list(MSGS)
                for i in range(8):
                    exhaust = e == 5 and i == 7  # one step where every teacher attempt fails
                    srv.clear()  # a plan the last step did not use (no teacher needed) goes
                    student_fault = rng.choice(FAULTS) if rng.random() < 0.4 else "ok"
                    srv.plan(STUDENT_NAME, "503" if exhaust else student_fault)
                    if exhaust:
                        srv.plan(TEACHER_NAME, "503", "reset", "timeout")
                    elif rng.random() < 0.4:
                        srv.plan(TEACHER_NAME, *rng.sample(
                            [f for f in TEACHER_RETRIED if f != "timeout"], rng.randint(1, 2)))
                    reply = kd.completion(messages=messages)
                    served += 1
                    messages += [{"role": "assistant",
                                  "content": reply.choices[0].message.content},
                                 {"role": "user", "content": f"observation {e}.{i}"}]
                ep.finish(success=True)
        except agentkd.TeacherError:
            assert (e, i) == (5, 7)
            surfaced += 1
    injected = sum(srv.injected.values())
    lost_to_surface = 3 * surfaced  # each surfaced TeacherError consumed 3 failed attempts
    survived = injected - lost_to_surface
    counts = check_log(kd.log, kd.run_id)
    print(f"\nfault campaign: {injected} faults injected ({dict(srv.injected)}), {survived} "
          f"survived, {surfaced} surfaced as TeacherError after the retry budget; "
          f"{served} steps served; log rows {counts}")
    assert surfaced == 1 and served == 47 and counts["steps"] == 47
    assert injected >= 20 and survived == injected - 3
    statuses = Counter(e.status for e in kd.log.episodes(kd.run_id))
    assert statuses == {"success": 5, "error": 1}
