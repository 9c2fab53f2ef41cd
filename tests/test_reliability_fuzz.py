"""Bad input at the public entry points, fuzzed with hypothesis.

Every input gets either a served step or a clear `agentkd` error — never another exception
type, never a silently wrong answer — and the log stays consistent after each one: no
half-written step, episode totals equal to the sum of their calls (`check_log`).
"""

from __future__ import annotations

import json
import math
import os
import struct
import warnings
from pathlib import Path

import litellm
import numpy as np
import pytest
from faultserver import FaultServer
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reliability_support import STUDENT, TEACHER, check_log, count_rows, register_prices

import agentkd
from agentkd.cascades import extract_action
from agentkd.config import Budget, Cascade, Retrieval
from agentkd.retrieval import DemoEpisode, DemoStep, DemoStore
from agentkd.retrieval.keys import StepKey

FUZZ = settings(max_examples=120, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])
ODD = ["\ud800", "a\udcffb", "\x00", "nul\x00byte", "\u202eevil", "\ufeff", "\U0001f600",
       "Action: look", '{"a": ', "\r\n\t", "é" * 3]
texts = st.one_of(st.text(max_size=40), st.sampled_from(ODD),
                  st.lists(st.sampled_from(ODD), min_size=1, max_size=4).map("".join))
parts = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
    st.fixed_dictionaries({"type": st.text(max_size=6)}),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
    st.integers(), st.text(max_size=5), st.none())
tool_calls = st.one_of(
    st.none(), st.text(max_size=5), st.integers(),
    st.lists(st.fixed_dictionaries({
        "id": st.text(max_size=5), "type": st.just("function"),
        "function": st.fixed_dictionaries({
            "name": st.text(max_size=8),
            "arguments": st.one_of(st.sampled_from(['{"a": ', '{"a": 1}', "[1,", ""]),
                                   st.text(max_size=20))})}), max_size=2))
roles = st.one_of(st.sampled_from(["system", "user", "assistant", "tool", "developer"]),
                  st.none(), st.text(max_size=8), st.integers())
contents = st.one_of(st.none(), texts, st.binary(max_size=12), st.integers(), st.floats(),
                     st.lists(parts, max_size=3), st.dictionaries(st.text(max_size=3), texts,
                                                                 max_size=2))
messages_ = st.fixed_dictionaries({"role": roles, "content": contents},
                                  optional={"tool_calls": tool_calls, "name": texts,
                                            "tool_call_id": st.text(max_size=5)})
plausible = st.fixed_dictionaries(  # right shape, odd values: most of these are served
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"]),
     "content": st.one_of(texts, st.lists(st.fixed_dictionaries(
         {"type": st.just("text"), "text": texts}), min_size=1, max_size=2))},
    optional={"tool_calls": tool_calls.filter(lambda t: isinstance(t, list))})
conversations = st.one_of(
    st.lists(plausible, min_size=1, max_size=6),
    st.lists(plausible, min_size=1, max_size=3),
    st.lists(st.one_of(plausible, messages_), min_size=1, max_size=6),
    st.lists(st.one_of(messages_, st.integers(), st.text(max_size=4), st.none()), max_size=6),
    st.none(), st.text(max_size=8), st.binary(max_size=8),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


def serve_or_refuse(kd: agentkd.Distiller, messages: object) -> str:
    """One call; checks the outcome and the log. Returns 'served' or the error class."""
    before = count_rows(kd.log, kd.run_id)
    try:
        reply = kd.completion(messages=messages)  # type: ignore[arg-type]
    except agentkd.AgentKDError as exc:
        text = str(exc)
        assert text and len(text) < 3000
        episodes, steps = count_rows(kd.log, kd.run_id)
        assert steps == before[1]  # nothing half-written
        outcome = type(exc).__name__
    else:
        assert isinstance(reply, litellm.ModelResponse) and reply.choices
        content = reply.choices[0].message.content
        assert content in ("Action: look", "Thought: look around first.\nAction: look")
        assert count_rows(kd.log, kd.run_id)[1] == before[1] + 1
        outcome = "served"
    check_log(kd.log, kd.run_id)
    return outcome


def test_fuzzed_messages_in_teacher_mode(scripted, tmp_path):
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher="scripted/teacher", mode="teacher",
                           log=f"sqlite:///{tmp_path / 'fuzz.db'}")
    outcomes: dict[str, int] = {}

    @FUZZ
    @given(conversations)
    def run(messages):
        outcome = serve_or_refuse(kd, messages)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    run()
    print(f"\nfuzz outcomes: {outcomes}")
    assert set(outcomes) <= {"served", "InputError"}, outcomes
    assert outcomes.get("served") and outcomes.get("InputError")


@pytest.mark.postgres
def test_fuzzed_messages_on_postgres(scripted):
    # PostgreSQL refuses NUL characters in text columns: before the log wrote them as U+FFFD,
    # an observation holding one made a served (and paid) step unloggable.
    url = os.environ.get("AGENTKD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("AGENTKD_TEST_POSTGRES_URL is not set (scripts/test.sh sets it)")
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher="scripted/teacher", mode="teacher", log=url)
    kd.completion(messages=[{"role": "user", "content": "binary output: \x00\x01 end"}])
    (step,) = kd.log.steps(kd.log.episodes(kd.run_id)[0].id)
    assert step.observation == "binary output: \ufffd\x01 end"

    @settings(FUZZ, max_examples=60)
    @given(conversations)
    def run(messages):
        assert serve_or_refuse(kd, messages) in ("served", "InputError")

    run()


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demos") / "store"
    with DemoStore.open(folder, create=True) as store:
        store.add_many([
            DemoEpisode(goal=f"put a {thing} in the {place}", task_type="pick", steps=[
                DemoStep(observation=f"You are in a room. You see a {thing}.",
                         action=f"take {thing} 1"),
                DemoStep(observation=f"You pick up the {thing}.", action=f"go to {place} 1"),
                DemoStep(observation=f"You arrive at {place} 1.", action=f"put {thing} 1")])
            for thing, place in [("mug", "desk"), ("apple", "fridge"), ("pen", "drawer")]])
    return folder


def test_fuzzed_messages_through_the_http_stack_in_distill_mode(small_store, tmp_path):
    # The full pipeline over loopback HTTP: key, retrieval, n=3 student request, gate, teacher.
    register_prices()
    litellm.suppress_debug_info = True
    with FaultServer() as srv:
        kw = {"api_base": srv.url, "api_key": "sk-fuzz-key-0000000000", "timeout": 5}
        kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill",
                               demos=str(small_store), log=f"sqlite:///{tmp_path / 'h.db'}",
                               teacher_kwargs=kw, student_kwargs=kw, teacher_retries=0,
                               retrieval={"k": 2})
        outcomes: dict[str, int] = {}

        @settings(FUZZ, max_examples=40)
        @given(st.lists(st.one_of(plausible, plausible, plausible, messages_), min_size=1,
                        max_size=3))
        def run(messages):
            outcome = serve_or_refuse(kd, messages)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

        run()
    # Shapes the provider refuses come back as TeacherError (its 4xx, scrubbed), not a crash.
    print(f"\nHTTP fuzz outcomes: {outcomes}")
    assert set(outcomes) <= {"served", "InputError", "TeacherError"}, outcomes
    assert outcomes.get("served")


def test_huge_messages_are_served_and_logged_whole(scripted, small_store, tmp_path):
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: look"] * n
    scripted.scripts["scripted/student"] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher="scripted/teacher", student="scripted/student",
                           mode="distill", demos=str(small_store),
                           log=f"sqlite:///{tmp_path / 'huge.db'}")
    observation = "You see a mug. " * 300_000  # 4.5 MB
    reply = kd.completion(messages=[{"role": "user", "content": "Your task is to: put a mug"},
                                    {"role": "user", "content": observation}])
    assert reply.choices[0].message.content == "Action: look"
    (episode,) = kd.log.episodes(kd.run_id)
    (step,) = kd.log.steps(episode.id)
    assert step.observation == observation and step.verdict == "student"
    assert step.demo_ids  # retrieval ran on the (truncated by the embedder) observation
    check_log(kd.log, kd.run_id)


@given(st.dictionaries(st.text(max_size=10), st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), texts,
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=5), st.integers())),
    max_size=4))
@settings(FUZZ, max_examples=200)
@example({"tool_calls": True})  # found by this test: `list(True)` raised
@example({"tool_calls": 3})
@example({"tool_calls": {"name": "x"}})
def test_fuzzed_message_dicts_never_break_action_extraction(message):
    action = extract_action(message)
    assert action is None or (isinstance(action, str) and action)


# ---- configuration ---------------------------------------------------------------------------

numbers = st.one_of(st.integers(-5, 200), st.floats(allow_nan=True, allow_infinity=True),
                    st.booleans(), st.none(), st.sampled_from(["3", "0.5", "nan", "inf", "x"]),
                    st.lists(st.integers(), max_size=1))


def config_dicts(model: type) -> st.SearchStrategy[dict]:
    keys = st.sampled_from([*model.model_fields, "bogus", "Samples"])
    values = st.one_of(numbers, st.sampled_from(["auto", "n", "parallel", "system",
                                                 "before_observation", "N"]),
                       st.dictionaries(st.sampled_from(["goal", "plan", "observation", "x"]),
                                       numbers, max_size=3))
    return st.dictionaries(keys, values, max_size=4)


def _within_bounds(cascade: Cascade, retrieval: Retrieval, budget: Budget) -> None:
    assert isinstance(cascade.samples, int) and 1 <= cascade.samples <= 32
    assert math.isfinite(cascade.temperature) and 0 <= cascade.temperature <= 2
    assert 0 < cascade.agreement <= 1 and cascade.sampling in ("auto", "n", "parallel")
    assert 1 <= retrieval.k <= 100 and 0 <= retrieval.window_before <= 50
    assert 0 <= retrieval.window_after <= 50 and retrieval.max_hits_per_episode >= 1
    w = retrieval.weights
    assert all(math.isfinite(x) and x >= 0 for x in (w.goal, w.plan, w.observation))
    assert w.goal + w.plan + w.observation > 0
    for cap in (budget.max_usd_per_episode, budget.max_usd_per_run):
        assert cap is None or cap > 0
    assert budget.max_steps_per_episode is None or budget.max_steps_per_episode >= 1


def _no_bool_taken(given_: dict, built: object) -> None:
    fields = type(built).model_fields if built is not None else {}
    for key, value in given_.items():
        if key in fields and fields[key].annotation is bool:
            continue  # a switch, not a number
        assert not isinstance(value, bool), f"{key}={value} accepted as a number"
        if isinstance(value, dict):
            _no_bool_taken(value, None)


def test_fuzzed_config_dicts_are_valid_or_config_errors(tmp_path):
    log = agentkd.TrajectoryLog(f"sqlite:///{tmp_path / 'cfg.db'}")
    accepted = refused = 0

    @settings(FUZZ, max_examples=300)
    @given(config_dicts(Cascade), config_dicts(Retrieval), config_dicts(Budget))
    def run(cascade, retrieval, budget):
        nonlocal accepted, refused
        try:
            kd = agentkd.Distiller(teacher="scripted/teacher", mode="teacher", log=log,
                                   cascade=cascade, retrieval=retrieval, budget=budget)
        except agentkd.ConfigError as exc:
            assert str(exc).startswith("invalid ")
            refused += 1
            return
        accepted += 1
        _within_bounds(kd.cascade, kd.retrieval, kd.budget)
        for given_, built in ((cascade, kd.cascade), (retrieval, kd.retrieval),
                              (budget, kd.budget)):
            _no_bool_taken(given_, built)
            for key, value in given_.items():  # numbers are taken as given, never clamped
                if isinstance(value, int | float) and not isinstance(value, bool):
                    assert getattr(built, key) == value

    run()
    assert accepted and refused


# ---- demo stores from another embedder, corrupted index files -------------------------------


def _tiny_embedder(folder: Path) -> str:
    """A sentence-transformers model folder: MiniLM with a 64-d projection (another embedder)."""
    from sentence_transformers import SentenceTransformer, models

    from agentkd.retrieval.embedder import _resolve

    base = SentenceTransformer(_resolve("all-MiniLM-L6-v2"), device="cpu")
    dense = models.Dense(base.get_embedding_dimension(), 64)
    SentenceTransformer(modules=[*base, dense], device="cpu").save(str(folder))
    return str(folder)


def test_a_store_from_another_embedder_is_refused_up_front(tmp_path, scripted):
    model = _tiny_embedder(tmp_path / "tiny-model")
    folder = tmp_path / "other-store"
    with DemoStore.open(folder, embedding_model=model, create=True) as store:
        store.add(DemoEpisode(goal="put a mug on the desk",
                              steps=[DemoStep(observation="You see a mug.", action="take mug")]))
        assert store.dim == 64
    kwargs = {"teacher": "scripted/teacher", "student": "scripted/student", "mode": "distill",
              "log": f"sqlite:///{tmp_path / 'e.db'}"}
    # Opened as if it were a MiniLM store.
    with pytest.raises(agentkd.StoreError, match="built with embedding model"):
        DemoStore.open(folder, embedding_model="all-MiniLM-L6-v2")
    # Its metadata rewritten to claim MiniLM: vectors of another size, refused at construction.
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "embedding_model": "all-MiniLM-L6-v2"}))
    with pytest.raises(agentkd.StoreError, match="64-d vectors but its embedding model"):
        agentkd.Distiller(demos=str(folder), **kwargs)
    # Its model gone: a clear error at construction, not at the first step of an episode.
    (folder / "meta.json").write_text(json.dumps({**meta, "embedding_model":
                                                   str(tmp_path / "missing-model")}))
    with pytest.raises(agentkd.ConfigError, match="cannot load embedding model"):
        agentkd.Distiller(demos=str(folder), **kwargs)
    # With its own model the store works.
    (folder / "meta.json").write_text(json.dumps(meta))
    scripted.scripts["scripted/student"] = lambda messages, n: ["Action: take mug"] * n
    kd = agentkd.Distiller(demos=str(folder), **kwargs)
    kd.completion(messages=[{"role": "user", "content": "Your task is to: put a mug away"}])
    (step,) = kd.log.steps(kd.log.episodes(kd.run_id)[0].id)
    assert step.demo_ids == [0] and step.verdict == "student"


def _corrupt(data: bytes, op: str, at: int, value: int) -> bytes:
    b = bytearray(data)
    if op == "truncate":
        return bytes(b[: at % len(b)])
    if op == "flip":
        b[at % len(b)] ^= 1 << (value % 8)
        return bytes(b)
    if op == "byte":
        b[at % min(64, len(b))] = value % 256
        return bytes(b)
    if op == "length":  # a huge element count where faiss reads a vector's size
        struct.pack_into("<q", b, 37, 1 << (28 + value % 12))
        return bytes(b)
    return bytes(np.random.default_rng(value).integers(0, 256, 1 + at % 4096, dtype=np.uint8))


def _peak_rss_reset() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@pytest.mark.parametrize("legacy", [False, True], ids=["checksummed", "no-checksum"])
def test_a_corrupted_faiss_file_is_rebuilt_never_trusted(small_store, tmp_path, legacy):
    """Any damage to index.faiss: the store rebuilds the index from vectors.f32 and answers
    exactly as before. Stores written before the checksum existed ("no-checksum") rely on
    faiss noticing: truncation and garbage are caught, a flipped bit inside a vector is not
    (that is what the checksum is for), so only the checksummed store is fuzzed with flips."""
    key = StepKey(goal="put a mug in the desk", observation="You see a mug.")
    with DemoStore.open(small_store) as intact:
        expected = [(w.hit_row, w.episode_id) for w in intact.search(key)]
    original = (small_store / "index.faiss").read_bytes()
    assert (small_store / "index.faiss.sum").exists()
    ops = st.sampled_from(["truncate", "garbage"] if legacy else
                          ["truncate", "garbage", "flip", "byte", "length"])

    @settings(FUZZ, max_examples=25)
    @given(ops, st.integers(0, 1 << 20), st.integers(0, 1 << 16))
    def run(op, at, value):
        folder = tmp_path / "copy"
        folder.mkdir(exist_ok=True)
        for f in small_store.iterdir():
            if f.is_file():
                (folder / f.name).write_bytes(f.read_bytes())
        if legacy:
            (folder / "index.faiss.sum").unlink()
        damaged = _corrupt(original, op, at, value)
        if damaged == original:
            return
        (folder / "index.faiss").write_bytes(damaged)
        _peak_rss_reset()
        base = _rss_mb()
        with pytest.warns(UserWarning, match="rebuilding it from vectors.f32"), \
                DemoStore.open(folder) as store:
            got = [(w.hit_row, w.episode_id) for w in store.search(key)]
        assert got == expected
        assert _peak_rss_mb() - base < 300  # never a giant allocation from a bad length field
        # The rebuilt index was written back whole: it opens cleanly next time.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            DemoStore.open(folder).close()

    run()


def test_a_corrupted_length_field_without_checksum_is_a_handled_error(small_store, tmp_path):
    # Legacy stores (no checksum file): faiss raises MemoryError on an absurd length; the store
    # treats it as unreadable and rebuilds instead of letting it escape.
    folder = tmp_path / "legacy"
    folder.mkdir()
    for f in small_store.iterdir():
        if f.is_file() and f.name != "index.faiss.sum":
            (folder / f.name).write_bytes(f.read_bytes())
    data = bytearray((folder / "index.faiss").read_bytes())
    struct.pack_into("<q", data, 37, 1 << 37)  # 512 GB: bad_alloc
    (folder / "index.faiss").write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="rebuilding it from vectors.f32"), \
            DemoStore.open(folder) as store:
        assert len(store) == 9
    assert os.path.exists(folder / "index.faiss.sum")
