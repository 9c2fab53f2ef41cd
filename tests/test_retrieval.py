"""In-context distillation: demo collection, the demo store and per-step retrieval.

Everything here uses the real offline all-MiniLM-L6-v2 embedder (loaded once per process) and
the scripted litellm provider from conftest.py. The ALFWorld-like episodes are generated from
alfworld's own goal templates and (task type, object, receptacle) triples taken from the
json_2.1.1 train / valid_seen games, with observations in ALFWorld's wording.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Any

import faiss
import litellm
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import agentkd
from agentkd.cli import app
from agentkd.config import KeyWeights, Retrieval
from agentkd.errors import StoreError
from agentkd.retrieval import (
    DemoEpisode,
    DemoStep,
    DemoStore,
    DemoWindow,
    StepKey,
    default_key,
    default_template,
    demos_from_log,
    get_embedder,
    inject_demos,
    split_reasoning,
)
from agentkd.retrieval import store as store_module
from agentkd.retrieval.formatting import HEADER

TEACHER, STUDENT = "scripted/teacher", "scripted/student"

@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Any:
    """MiniLM on small batches is several times faster on one thread when the machine is
    shared (intra-op threads wait on each other); restored for the rest of the session."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- ALFWorld-like episodes --------------------------------------------------------------

TEMPLATES = {  # alfworld/gen/goal_library.py
    "pick_and_place_simple": ("put a {o} in {r}.", "put some {o} on {r}."),
    "pick_clean_then_place_in_recep": ("put a clean {o} in {r}.",
                                       "clean some {o} and put it in {r}."),
    "pick_heat_then_place_in_recep": ("put a hot {o} in {r}.", "heat some {o} and put it in {r}."),
    "pick_cool_then_place_in_recep": ("put a cool {o} in {r}.", "cool some {o} and put it in {r}."),
    "pick_two_obj_and_place": ("put two {o} in {r}.", "find two {o} and put them in {r}."),
    "look_at_obj_in_light": ("look at {o} under the {r}.", "examine the {o} with the {r}."),
}
CLEAN, HEAT, COOL = ("pick_clean_then_place_in_recep", "pick_heat_then_place_in_recep",
                     "pick_cool_then_place_in_recep")
SIMPLE, TWO, LIGHT = "pick_and_place_simple", "pick_two_obj_and_place", "look_at_obj_in_light"
ROOM = ("-= Welcome to TextWorld, ALFRED! =-\n\nYou are in the middle of a room. Looking quickly "
        "around you, you see a cabinet 1, a cabinet 2, a cabinet 3, a coffeemachine 1, a "
        "countertop 1, a countertop 2, a diningtable 1, a drawer 1, a fridge 1, a garbagecan 1, "
        "a microwave 1, a shelf 1, a shelf 2, a sidetable 1, a sinkbasin 1, a stoveburner 1, "
        "a stoveburner 2, and a toaster 1.")
PLACES = ["countertop 1", "countertop 2", "diningtable 1", "cabinet 3", "shelf 2", "drawer 1",
          "sidetable 1", "desk 1", "dresser 1", "stoveburner 2"]
TREATMENT = {CLEAN: ("sinkbasin 1", "clean"), HEAT: ("microwave 1", "heat"),
             COOL: ("fridge 1", "cool")}
# Step (0-based) where each task type does what only it does: at the sink / microwave /
# fridge, at the lamp, or putting the first of two objects away.
CHARACTERISTIC_STEP = {CLEAN: 3, HEAT: 3, COOL: 3, LIGHT: 3, TWO: 4, SIMPLE: 3}
PICKUP_STEP = 2


def alfworld_episode(task_type: str, obj: str, recep: str, variant: int = 0
                     ) -> tuple[str, list[tuple[str, str, str]]]:
    """(goal, [(observation, thought, action)]) of a successful expert run of this task.

    Instance details (where the object lies, its number, what else is there) vary with the
    task and the goal variant, as they do between ALFWorld games.
    """
    o, r = obj.lower(), recep.lower()
    goal = TEMPLATES[task_type][variant].format(o=o, r=r)
    h = zlib.crc32(f"{task_type}{obj}{recep}{variant}".encode())
    src, other = PLACES[h % len(PLACES)], ["spoon", "peppershaker", "sponge", "pen", "cd"][h % 5]
    item, dest = f"{o} {1 + h % 3}", f"{r} 1"
    steps = [(f"{ROOM}\n\nYour task is to: {goal}", f"I need to find a {o} first.", f"go to {src}"),
             (f"You arrive at {src}. On the {src}, you see a {item}, and a {other} 2.",
              f"There is the {o}.", f"take {item} from {src}")]
    picked = f"You pick up the {item} from the {src}."
    arrive_dest = (f"You arrive at {dest}. On the {dest}, you see a {other} 1.", "Put it here.",
                   f"put {item} in/on {dest}")
    if task_type in TREATMENT:
        place, verb = TREATMENT[task_type]
        arrive = (f"You arrive at {place}. On the {place}, you see nothing." if verb == "clean"
                  else f"You arrive at {place}. The {place} is closed.")
        done = f"You {verb} the {item} using the {place}."
        steps += [(picked, f"Now I {verb} it with the {place.split()[0]}.", f"go to {place}"),
                  (arrive, f"{verb.capitalize()} the {o}.", f"{verb} {item} with {place}"),
                  (done, f"Now put it in the {r}.", f"go to {dest}"), arrive_dest]
    elif task_type == LIGHT:
        steps += [(picked, "Now find the lamp.", "go to sidetable 1"),
                  (f"You arrive at sidetable 1. On the sidetable 1, you see a desklamp 1, and a "
                   f"{other} 1.", "Turn on the lamp.", "use desklamp 1")]
    elif task_type == TWO:
        second = f"{o} {4 + h % 2}"
        steps += [(picked, f"Put the first {o} away.", f"go to {dest}"),
                  (f"You arrive at {dest}. On the {dest}, you see nothing.", "Put it.",
                   f"put {item} in/on {dest}"),
                  (f"You put the {item} in/on the {dest}.", f"Now find the second {o}.",
                   "go to shelf 1"),
                  (f"You arrive at shelf 1. On the shelf 1, you see a {second}.", "Take it.",
                   f"take {second} from shelf 1"),
                  (f"You pick up the {second} from the shelf 1.", "Back again.", f"go to {dest}"),
                  (f"You arrive at {dest}. On the {dest}, you see a {item}.", "Put it.",
                   f"put {second} in/on {dest}")]
    else:
        steps += [(picked, f"Now the {r}.", f"go to {dest}"), arrive_dest]
    return goal, steps


def demo(task_type: str, obj: str, recep: str, variant: int = 0, **extra: Any) -> DemoEpisode:
    goal, steps = alfworld_episode(task_type, obj, recep, variant)
    return DemoEpisode(goal=goal, task_type=task_type, **extra,
                       steps=[DemoStep(observation=o, reasoning=t, action=a) for o, t, a in steps])


# Train games: 8 per task type, with the same object and receptacle under several task types
# (as in ALFWorld: mug → coffeemachine is a clean, a heat and a cool task).
TRAIN = [(LIGHT, o, "DeskLamp") for o in ("Laptop", "Box", "CreditCard", "Statue", "Pen",
                                          "TissueBox", "Bowl", "Pencil")] + [
    (SIMPLE, o, r) for o, r in (("Box", "Dresser"), ("PepperShaker", "CounterTop"),
                                ("Kettle", "StoveBurner"), ("Laptop", "Sofa"), ("Pen", "Desk"),
                                ("Watch", "DiningTable"), ("Mug", "SideTable"),
                                ("KeyChain", "CoffeeTable"))] + [
    (CLEAN, o, r) for o, r in (("Cloth", "Drawer"), ("Plate", "DiningTable"),
                               ("DishSponge", "CounterTop"), ("SoapBar", "Cart"),
                               ("Fork", "SideTable"), ("Pan", "Cabinet"), ("Tomato", "GarbageCan"),
                               ("Mug", "CoffeeMachine"))] + [
    (COOL, o, r) for o, r in (("Plate", "Shelf"), ("Potato", "GarbageCan"),
                              ("Mug", "CoffeeMachine"), ("Pan", "CounterTop"), ("Cup", "Cabinet"),
                              ("Bowl", "CounterTop"), ("Bowl", "DiningTable"),
                              ("Tomato", "GarbageCan"))] + [
    (HEAT, o, r) for o, r in (("Plate", "Fridge"), ("Potato", "GarbageCan"),
                              ("Plate", "DiningTable"), ("Cup", "Shelf"), ("Apple", "Fridge"),
                              ("Bread", "Fridge"), ("Mug", "CoffeeMachine"),
                              ("Plate", "Shelf"))] + [
    (TWO, o, r) for o, r in (("Glassbottle", "Fridge"), ("SaltShaker", "Drawer"), ("Pen", "Desk"),
                             ("KeyChain", "ArmChair"), ("RemoteControl", "ArmChair"),
                             ("RemoteControl", "Sofa"), ("TissueBox", "Drawer"),
                             ("Watch", "CoffeeTable"))]
# Unseen (valid_seen) tasks to query with: (task type, object, receptacle, goal variant,
# whether the store also holds another game of the same task, as 93% of valid_seen tasks
# have in the train split).
UNSEEN = [
    (CLEAN, "Mug", "CoffeeMachine", 0, True), (CLEAN, "Lettuce", "Fridge", 0, True),
    (CLEAN, "ButterKnife", "DiningTable", 1, False), (HEAT, "Egg", "CounterTop", 1, True),
    (HEAT, "Mug", "Cabinet", 0, True), (HEAT, "Potato", "Fridge", 0, False),
    (COOL, "Plate", "CounterTop", 0, True), (COOL, "Lettuce", "CounterTop", 1, True),
    (COOL, "Apple", "GarbageCan", 0, False), (LIGHT, "AlarmClock", "DeskLamp", 0, True),
    (LIGHT, "KeyChain", "DeskLamp", 1, True), (SIMPLE, "TissueBox", "Toilet", 0, False),
    (SIMPLE, "Book", "SideTable", 1, True), (TWO, "CD", "Drawer", 0, True),
    (TWO, "SoapBar", "GarbageCan", 1, False),
]


def labelled_store_episodes() -> list[DemoEpisode]:
    # The clean mug → coffeemachine game uses the other goal wording than the query below.
    episodes = [demo(t, o, r, variant=1 if (t, o) == (CLEAN, "Mug") else i % 2)
                for i, (t, o, r) in enumerate(TRAIN)]
    episodes += [demo(t, o, r, variant=1 - v) for t, o, r, v, covered in UNSEEN
                 if covered and (t, o, r) != (CLEAN, "Mug", "CoffeeMachine")]
    return episodes


@pytest.fixture(scope="module")
def labelled_store(tmp_path_factory: pytest.TempPathFactory) -> DemoStore:
    store = DemoStore.open(tmp_path_factory.mktemp("labelled"), create=True)
    store.add_many(labelled_store_episodes())
    return store


def hit(window: DemoWindow) -> DemoStep:
    return window.steps[window.hit_step - window.first_step]


def small_episode(name: str, n: int, goal: str | None = None) -> DemoEpisode:
    """An episode whose steps are easy to tell apart (distinct observations and actions)."""
    things = ["apple", "book", "candle", "dish", "egg", "fork", "glass", "hat", "ink", "jar",
              "kettle", "lamp", "mug", "nut", "orange", "pan"]
    return DemoEpisode(goal=goal or f"task {name}: sort the {things[len(name) % 16]}s",
                       source=name, steps=[
                           DemoStep(observation=f"{name}: you see a {things[i % 16]} {i} on the "
                                                f"table {i}", reasoning=f"think {name} {i}",
                                    action=f"take {things[i % 16]} {i} ({name})")
                           for i in range(n)])


# ---- collecting: only successful episodes become demos -----------------------------------

def run_task(goal: str, steps: list[tuple[str, str, str]], upto: int | None = None
             ) -> list[list[dict[str, Any]]]:
    """A user's ReAct loop over a scripted environment; returns the prompt of every call."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are an agent in a household text game."},
        {"role": "user", "content": f"Observation: {steps[0][0]}"}]
    prompts = []
    for i in range(len(steps) if upto is None else upto):
        prompts.append([dict(m) for m in messages])
        reply = litellm.completion(model=TEACHER, messages=messages)
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        if i + 1 < len(steps):
            messages.append({"role": "user", "content": f"Observation: {steps[i + 1][0]}"})
    return prompts


def expert_teacher(tasks: list[tuple[str, list[tuple[str, str, str]]]]):
    """Scripted teacher: the expert's 'Thought/Action' for the (task, observation) it is shown."""
    answers = {(steps[0][0], o): f"Thought: {t}\nAction: {a}" for _, steps in tasks
               for o, t, a in steps}

    def answer(messages: list[dict[str, Any]], n: int) -> list[str]:
        seen = [m["content"].removeprefix("Observation: ") for m in messages
                if m["role"] == "user" and m["content"].startswith("Observation: ")]
        return [answers[(seen[0], seen[-1])]] * n

    return answer


COLLECT_TASKS = [(CLEAN, "Plate", "DiningTable"), (HEAT, "Apple", "Fridge"),
                 (COOL, "Mug", "CoffeeMachine"), (LIGHT, "Box", "DeskLamp"),
                 (SIMPLE, "Pen", "Desk")]


@pytest.fixture
def collected(scripted, log_url, tmp_path) -> dict[str, Any]:
    """A collect run: three successful episodes, one failure, one unfinished, one error."""
    tasks = [alfworld_episode(*t) for t in COLLECT_TASKS]
    scripted.scripts[TEACHER] = expert_teacher(tasks)
    kd = agentkd.Distiller(teacher=TEACHER, mode="collect", log=log_url,
                           demos=tmp_path / "collected")
    outcomes = [True, False, True, None, True]
    for (task_type, *_), (goal, steps), outcome in zip(COLLECT_TASKS, tasks, outcomes,
                                                       strict=True):
        with kd.episode_scope(task_id=goal, goal=goal, task_type=task_type) as ep:
            run_task(goal, steps)
            if outcome is not None:
                ep.finish(success=outcome)
    with pytest.raises(RuntimeError), kd.episode_scope(task_id="crash", goal=tasks[0][0]):
        run_task(*tasks[0], upto=2)
        raise RuntimeError("the environment crashed")
    kd.close()
    return {"kd": kd, "tasks": tasks, "outcomes": outcomes, "store": kd.demos}


def test_collect_mode_turns_only_successful_episodes_into_demos(collected):
    kd, store = collected["kd"], collected["store"]
    episodes = kd.log.episodes(kd.run_id)
    assert [e.status for e in episodes] == ["success", "failure", "success", "done", "success",
                                            "error"]
    winners = [e for e in episodes if e.success]
    assert store.sources() == {f"{kd.run_id}#{e.id}" for e in winners}
    assert store.stats()["episodes"] == 3 and store.stats()["failed_episodes"] == 0
    assert store.stats()["task_types"] == {CLEAN: 1, COOL: 1, SIMPLE: 1}
    # Each demo step is the logged step: observation, the teacher's thought, its action.
    for episode in winners:
        goal, steps = collected["tasks"][[g for g, _ in collected["tasks"]].index(episode.goal)]
        key = StepKey(goal=goal, observation=f"Observation: {steps[1][0]}")
        (window,) = store.search(key, Retrieval(k=1))
        assert window.goal == goal and window.hit_step == 1
        logged = kd.log.steps(episode.id)
        assert [(s.observation, s.reasoning, s.action) for s in window.steps] == [
            (logged[i].observation, split_reasoning(logged[i].final_text), logged[i].final_action)
            for i in range(0, 3)]
        assert [s.action for s in window.steps] == [a for _, _, a in steps[:3]]
        assert [s.reasoning for s in window.steps] == [t for _, t, _ in steps[:3]]
    assert len(store) == sum(len(collected["tasks"][i][1]) for i in (0, 2, 4))


def test_demos_from_log_keeps_only_successes_is_idempotent_and_can_keep_failures(collected,
                                                                                  tmp_path):
    kd = collected["kd"]
    with DemoStore.open(tmp_path / "rebuilt", create=True) as store:
        assert demos_from_log(kd.log, kd.run_id, store) == 3
        assert demos_from_log(kd.log, kd.run_id, store) == 0  # same sources are skipped
        assert store.sources() == collected["store"].sources()
        assert len(store) == len(collected["store"])
    with DemoStore.open(tmp_path / "analysis", create=True) as store:
        # Failed, unfinished and crashed episodes too: only with include_failed.
        assert demos_from_log(kd.log, kd.run_id, store, include_failed=True) == 6
        assert store.stats()["failed_episodes"] == 3


def test_split_reasoning_drops_the_action_line_and_label():
    assert split_reasoning("Thought: the mug is clean.\nAction: go to sinkbasin 1") == (
        "the mug is clean.")
    assert split_reasoning("**Thought**: hmm\n> take mug 1") == "hmm"
    assert split_reasoning(None) == ""


# ---- windows ----------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path) -> DemoStore:
    opened = DemoStore.open(tmp_path / "demos", create=True)
    yield opened
    opened.close()


def key_of(episode: DemoEpisode, idx: int) -> StepKey:
    return StepKey(goal=episode.goal, observation=episode.steps[idx].observation)


def test_windows_are_right_at_episode_edges(store):
    episode = small_episode("edge", 6)
    store.add(episode)
    store.add(small_episode("other", 4))
    expected = {0: (0, 1), 1: (0, 2), 2: (0, 3), 3: (1, 4), 4: (2, 5), 5: (3, 5)}
    for idx, (lo, hi) in expected.items():
        (window,) = store.search(key_of(episode, idx), Retrieval(k=1))
        assert (window.hit_step, window.first_step) == (idx, lo)
        assert window.steps == episode.steps[lo:hi + 1]
        assert hit(window) == episode.steps[idx]
    wide = Retrieval(k=1, window_before=0, window_after=3)
    (window,) = store.search(key_of(episode, 4), wide)
    assert window.steps == episode.steps[4:6] and window.first_step == 4
    (window,) = store.search(key_of(episode, 0), Retrieval(k=1, window_before=5, window_after=0))
    assert window.steps == episode.steps[:1]


def test_one_hit_per_episode_by_default_and_overlapping_windows_never_repeat_steps(store):
    for name in ("a", "b", "c", "d"):
        store.add(small_episode(name, 12, goal="sort the kitchen"))
    key = StepKey(goal="sort the kitchen", observation="a: you see a fork 5 on the table 5")
    windows = store.search(key, Retrieval(k=6))
    assert len(windows) == 4  # one per episode: only four episodes exist
    assert len({w.episode_id for w in windows}) == 4
    assert windows[0].hit_step == 5 and windows[0].steps[0].observation.startswith("a:")
    assert [w.score for w in windows] == sorted((w.score for w in windows), reverse=True)

    several = store.search(key, Retrieval(k=6, max_hits_per_episode=3))
    assert len(several) == 6
    per_episode: dict[int, list[int]] = {}
    for w in several:
        rows = list(range(w.first_step, w.first_step + len(w.steps)))
        assert not set(rows) & set(per_episode.get(w.episode_id, []))  # no step twice
        per_episode.setdefault(w.episode_id, []).extend(rows)
    assert max(len([w for w in several if w.episode_id == e]) for e in per_episode) <= 3


def test_search_widens_until_k_windows_when_best_steps_crowd_into_few_episodes(store):
    # Two long episodes share the query's goal, so their 120 steps outrank every other step;
    # the first 64 candidates hold only two episodes but k=6 windows exist.
    for name in ("long1", "long2"):
        store.add(small_episode(name, 60, goal="put a clean mug in coffeemachine."))
    for name in ("s1", "s2", "s3", "s4", "s5"):
        store.add(small_episode(name, 3))
    key = StepKey(goal="put a clean mug in coffeemachine.", observation="you see a mug")
    windows = store.search(key, Retrieval(k=6))
    assert len(windows) == 6 and len({w.episode_id for w in windows}) == 6
    assert {w.steps[0].observation.split(":")[0] for w in windows[:2]} == {"long1", "long2"}


def test_empty_store_and_empty_key_return_nothing(store):
    assert store.search(StepKey(goal="g", observation="o")) == []
    store.add(small_episode("x", 2))
    assert store.search(StepKey(goal="", observation="")) == []


def test_weighted_multi_key_score_is_the_weighted_sum_of_cosines(store):
    episode = DemoEpisode(goal="heat some egg and put it in countertop.",
                          plan="find egg, heat it in the microwave, put it on a countertop",
                          steps=[DemoStep("You arrive at microwave 1. The microwave 1 is closed.",
                                          "heat egg 1 with microwave 1")])
    store.add(episode)
    key = StepKey(goal="put a hot egg in countertop.", plan="find and heat an egg",
                  observation="You arrive at microwave 1. The microwave 1 is open.")
    emb = get_embedder().encode([key.goal, key.plan, key.observation, episode.goal, episode.plan,
                                 episode.steps[0].observation])
    cosines = [float(emb[i] @ emb[i + 3]) for i in range(3)]
    for weights in (KeyWeights(), KeyWeights(goal=2.0, plan=0.0, observation=0.25),
                    KeyWeights(goal=0.0, plan=1.0, observation=0.0)):
        (window,) = store.search(key, Retrieval(k=1, weights=weights))
        expected = (weights.goal * cosines[0] + weights.plan * cosines[1]
                    + weights.observation * cosines[2])
        assert window.score == pytest.approx(expected, abs=1e-4)


# ---- retrieval quality on a labelled ALFWorld-like set ------------------------------------

def test_nearest_demo_for_a_clean_mug_step_comes_from_a_clean_then_place_task(labelled_store):
    goal, steps = alfworld_episode(CLEAN, "Mug", "CoffeeMachine")
    assert goal == "put a clean mug in coffeemachine."
    # The store also holds "heat/cool some mug and put it in coffeemachine" and a mug put on
    # a sidetable: the nearest step must still come from a clean-then-place game, and its
    # window shows the next move of that game: to the sink.
    for step in (0, PICKUP_STEP, CHARACTERISTIC_STEP[CLEAN]):
        windows = labelled_store.search(StepKey(goal=goal, observation=steps[step][0]))
        assert len(windows) == 6
        assert windows[0].task_type == CLEAN, (step, [w.goal for w in windows])
    (window,) = labelled_store.search(StepKey(goal=goal, observation=steps[PICKUP_STEP][0]),
                                      Retrieval(k=1))
    assert hit(window).action == "go to sinkbasin 1"
    assert window.goal == "clean some mug and put it in coffeemachine."


@pytest.mark.parametrize("task_type, obj, recep, variant", [
    (HEAT, "Egg", "CounterTop", 1), (HEAT, "Mug", "Cabinet", 0),
    (COOL, "Plate", "CounterTop", 0), (COOL, "Lettuce", "CounterTop", 1),
    (LIGHT, "AlarmClock", "DeskLamp", 0), (LIGHT, "KeyChain", "DeskLamp", 1),
    (TWO, "CD", "Drawer", 0), (CLEAN, "ButterKnife", "DiningTable", 1),
])
def test_characteristic_steps_retrieve_their_own_task_type(labelled_store, task_type, obj,
                                                           recep, variant):
    # At the microwave / fridge / lamp / sink, heat→heat, cool→cool, light→light, clean→clean.
    goal, steps = alfworld_episode(task_type, obj, recep, variant)
    idx = CHARACTERISTIC_STEP[task_type]
    (window,) = labelled_store.search(StepKey(goal=goal, observation=steps[idx][0]),
                                      Retrieval(k=1))
    assert window.task_type == task_type
    assert hit(window).action.split()[0] == steps[idx][2].split()[0]  # same kind of move


def test_retrieval_accuracy_over_the_labelled_set(labelled_store):
    """Top-1 / top-3 task-type accuracy at the first, pick-up and characteristic steps."""
    results: dict[str, list[tuple[bool, bool, bool]]] = {}
    for weights_name, weights in (("default", KeyWeights()),
                                  ("goal only", KeyWeights(goal=1, plan=0, observation=0)),
                                  ("observation only", KeyWeights(goal=0, plan=0, observation=1))):
        rows = []
        for task_type, obj, recep, variant, covered in UNSEEN:
            goal, steps = alfworld_episode(task_type, obj, recep, variant)
            for idx in (0, PICKUP_STEP, CHARACTERISTIC_STEP[task_type]):
                windows = labelled_store.search(StepKey(goal=goal, observation=steps[idx][0]),
                                                Retrieval(weights=weights))
                types = [w.task_type for w in windows]
                rows.append((covered, types[0] == task_type, task_type in types[:3]))
        results[weights_name] = rows

    def rate(rows: list[tuple[bool, bool, bool]], col: int, covered: bool | None = None) -> float:
        picked = [r for r in rows if covered is None or r[0] == covered]
        return sum(r[col] for r in picked) / len(picked)

    default = results["default"]
    print({name: (round(rate(rows, 1), 2), round(rate(rows, 2), 2))
           for name, rows in results.items()})
    assert rate(default, 1) >= 0.75  # 45 queries; measured 0.78
    assert rate(default, 2) >= 0.9  # right task type among the first three windows
    assert rate(default, 1, covered=True) >= 0.9  # a game of the same task is in the store
    # Together the keys do better than the observation alone.
    assert rate(default, 1) > rate(results["observation only"], 1)


# ---- persistence -------------------------------------------------------------------------

QUERY_KEYS = [StepKey(goal="put a clean mug in coffeemachine.",
                      observation="You pick up the mug 1 from the countertop 1."),
              StepKey(goal="heat some egg and put it in countertop.",
                      observation="You arrive at microwave 1. The microwave 1 is closed."),
              StepKey(goal="look at cd under the desklamp.", plan="find cd, then the lamp",
                      observation="You arrive at sidetable 1.")]


@pytest.fixture(scope="module")
def filled_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A closed store of 18 ALFWorld-like episodes (three per task type), built once."""
    path = tmp_path_factory.mktemp("filled") / "store"
    with DemoStore.open(path, create=True) as store:
        store.add_many([demo(t, o, r, variant=i % 2, source=f"s{i}")
                        for i, (t, o, r) in enumerate(TRAIN[::8] + TRAIN[1::8] + TRAIN[2::8])])
    return path


@pytest.fixture
def filled(filled_store: Path, tmp_path: Path) -> Path:
    """A private copy of `filled_store`."""
    return Path(shutil.copytree(filled_store, tmp_path / "s"))


def results(store: DemoStore, config: Retrieval | None = None) -> list[list[DemoWindow]]:
    return [store.search(key, config) for key in QUERY_KEYS]


def raw(store: DemoStore) -> list[tuple[list[float], list[int]]]:
    queries = [store.query_vector(k, KeyWeights()) for k in QUERY_KEYS]
    return [(s.tolist(), r.tolist()) for s, r in (store.search_rows(q, 10) for q in queries)]


def same_windows(a: list[list[DemoWindow]], b: list[list[DemoWindow]]) -> None:
    strip = [[(w.episode_id, w.hit_row, w.hit_step, w.first_step, w.goal, w.plan, w.task_type,
               w.steps) for w in ws] for ws in a]
    assert strip == [[(w.episode_id, w.hit_row, w.hit_step, w.first_step, w.goal, w.plan,
                       w.task_type, w.steps) for w in ws] for ws in b]
    for ws_a, ws_b in zip(a, b, strict=True):
        assert [w.score for w in ws_a] == pytest.approx([w.score for w in ws_b], abs=1e-5)


def test_a_store_written_closed_and_reopened_returns_identical_results(tmp_path):
    store = DemoStore.open(tmp_path / "s", create=True)
    for i, (t, o, r) in enumerate(TRAIN[::4]):  # one by one, as collect mode adds them
        store.add(demo(t, o, r, variant=i % 2))
    before, before_raw, stats = results(store), raw(store), store.stats()
    store.close()
    store.close()  # closing twice is harmless
    assert (tmp_path / "s" / "index.faiss").exists()
    with DemoStore.open(tmp_path / "s") as again:
        assert raw(again) == before_raw  # bit-identical index results for identical queries
        same_windows(results(again), before)
        assert {**again.stats(), "size_bytes": 0} == {**stats, "size_bytes": 0}
        # It keeps growing incrementally: new steps are found, old results are unchanged.
        again.add(small_episode("late", 3))
        (window,) = again.search(key_of(small_episode("late", 3), 1), Retrieval(k=1))
        assert window.steps[0].observation.startswith("late:")
    with DemoStore.open(tmp_path / "s") as third:
        assert len(third) == stats["steps"] + 3


def test_flush_is_cheap_and_an_unflushed_index_is_topped_up_on_open(filled):
    (filled / "index.faiss").unlink()
    store = DemoStore.open(filled)  # rebuilt from vectors.f32
    store.add(small_episode("new", 4))
    store.flush()  # a few steps behind: the index file is not rewritten yet
    assert not (filled / "index.faiss").exists()
    before = results(store)
    # No close (as after a crash): rows and vectors are durable, the index is rebuilt.
    with DemoStore.open(filled) as again:
        same_windows(results(again), before)
    assert (filled / "index.faiss").exists()
    store.close()


def test_opening_with_another_embedding_model_is_a_clear_error(tmp_path):
    DemoStore.open(tmp_path / "s", create=True).close()
    other = "sentence-transformers/paraphrase-MiniLM-L3-v2"
    with pytest.raises(StoreError, match=f"built with embedding model 'all-MiniLM-L6-v2', not "
                                         f"'{other}'"):
        DemoStore.open(tmp_path / "s", embedding_model=other)
    # The same model under its hub name is the same model.
    DemoStore.open(tmp_path / "s", embedding_model="sentence-transformers/all-MiniLM-L6-v2").close()
    with pytest.raises(StoreError, match="no demo store at"):
        DemoStore.open(tmp_path / "missing")
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    (tmp_path / "s" / "meta.json").write_text(json.dumps({**meta, "format": 99}))
    with pytest.raises(StoreError, match="newer than this agentkd"):
        DemoStore.open(tmp_path / "s")


def test_a_corrupted_index_is_rebuilt_from_the_vectors(filled, tmp_path):
    with DemoStore.open(filled) as store:
        before = results(store)
    index_file = filled / "index.faiss"
    index_file.write_bytes(b"\x00garbage" * 100)
    with pytest.warns(UserWarning, match="index.faiss is .*rebuilding it from vectors.f32"), \
            DemoStore.open(filled) as store:
        same_windows(results(store), before)
    assert faiss.read_index(str(index_file)).ntotal > 0  # the rebuilt index was written back

    # A readable index that is not this store's (copied from another store) is caught too.
    with DemoStore.open(tmp_path / "other", create=True) as other:
        other.add(small_episode("foreign", 4))
    index_file.write_bytes((tmp_path / "other" / "index.faiss").read_bytes())
    with pytest.warns(UserWarning, match="index.faiss is .*rebuilding it from vectors.f32"), \
            DemoStore.open(filled) as store:
        same_windows(results(store), before)


def test_a_truncated_vectors_file_is_a_clear_error(filled):
    vectors = filled / "vectors.f32"
    with open(vectors, "r+b") as f:
        f.truncate(vectors.stat().st_size - 3 * 384 * 4 - 10)
    with pytest.raises(StoreError, match=r"vectors.f32 is truncated.*rebuild it with `agentkd "
                                         r"demos build`"):
        DemoStore.open(filled)


def test_an_add_that_fails_midway_leaves_the_store_unchanged(filled, monkeypatch):
    store = DemoStore.open(filled)
    steps, size, before = len(store), (filled / "vectors.f32").stat().st_size, results(store)

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store_module.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.add_many([small_episode("lost", 5), small_episode("lost too", 2)])
    monkeypatch.undo()
    assert len(store) == steps and store.stats()["episodes"] == 18
    assert (filled / "vectors.f32").stat().st_size == size
    same_windows(results(store), before)
    store.add(small_episode("kept", 2))
    after = results(store)
    store.close()
    with DemoStore.open(filled) as again:
        assert len(again) == steps + 2 and "lost" not in again.sources()
        same_windows(results(again), after)


def test_vectors_left_by_an_add_that_never_committed_are_cut_off(filled):
    with DemoStore.open(filled) as store:
        before = results(store)
        steps = len(store)
    with open(filled / "vectors.f32", "ab") as f:  # a crash between write and commit
        np.ones(3 * 384 * 2 + 7, dtype=np.float32).tofile(f)
    with pytest.warns(UserWarning, match="cutting them off"), DemoStore.open(filled) as store:
        assert len(store) == steps
        same_windows(results(store), before)
        late = small_episode("late", 3)
        store.add(late)  # the new rows line up with their vectors again
        (window,) = store.search(key_of(late, 2), Retrieval(k=1))
        assert hit(window) == late.steps[2]


def test_switching_from_exact_to_hnsw_keeps_the_results(filled, tmp_path):
    episodes = [small_episode(name, 6 + i % 3) for i, name in enumerate("abcdefghij")]
    keys = [key_of(e, i % len(e.steps)) for i, e in enumerate(episodes)] + [
        StepKey(goal="sort things", observation="you see a mug on the table")]
    config = Retrieval(k=6, max_hits_per_episode=2)
    flat = DemoStore.open(tmp_path / "flat", create=True)
    approx = DemoStore.open(tmp_path / "approx", create=True, approx_threshold=40)
    for store in (flat, approx):
        store.add_many(episodes[:3])  # 21 steps: exact
        for episode in episodes[3:]:  # crosses 40 steps: HNSW from here on
            store.add(episode)
    assert len(approx) > 40
    assert isinstance(approx._index, faiss.IndexHNSWFlat) and approx.stats()["index"] == "hnsw"
    assert isinstance(flat._index, faiss.IndexFlatIP) and flat.stats()["index"] == "flat"
    assert json.loads((tmp_path / "approx" / "meta.json").read_text())["index"] == "hnsw"
    expected = [flat.search(k, config) for k in keys]
    same_windows([approx.search(k, config) for k in keys], expected)
    approx.close()
    flat.close()
    with DemoStore.open(tmp_path / "approx") as again:
        assert isinstance(again._index, faiss.IndexHNSWFlat)
        same_windows([again.search(k, config) for k in keys], expected)
    # An existing flat store switches when opened with a lower threshold.
    with DemoStore.open(filled) as store:
        before = results(store, config)
    with DemoStore.open(filled, approx_threshold=10) as switched:
        assert isinstance(switched._index, faiss.IndexHNSWFlat)
        same_windows(results(switched, config), before)


def test_stats_summarise_the_store(tmp_path):
    with DemoStore.open(tmp_path / "s", create=True) as store:
        store.add(demo(CLEAN, "Mug", "CoffeeMachine", cost_usd=0.25))
        store.add(demo(HEAT, "Egg", "CounterTop", cost_usd=0.5))
        stats = store.stats()
    assert stats["episodes"] == 2 and stats["steps"] == 12
    assert stats["task_types"] == {CLEAN: 1, HEAT: 1}
    assert stats["embedding_model"] == "all-MiniLM-L6-v2" and stats["dim"] == 384
    assert stats["collection_cost_usd"] == pytest.approx(0.75) and stats["size_bytes"] > 0


# ---- formatting and keys ------------------------------------------------------------------

def test_default_template_and_injection():
    window = DemoWindow(episode_id=1, hit_step=1, hit_row=7, score=1.5,
                        goal="put a clean mug in coffeemachine.", plan="", task_type=CLEAN,
                        first_step=0,
                        steps=[DemoStep("You see a mug 1.", "take mug 1", "A mug."),
                               DemoStep("You pick up the mug 1.", "go to sinkbasin 1")])
    block = default_template([window])
    assert block == (f"{HEADER}\n\n## Example 1\nGoal: put a clean mug in coffeemachine.\n"
                     "Observation: You see a mug 1.\nThought: A mug.\nAction: take mug 1\n"
                     "Observation: You pick up the mug 1.\nAction: go to sinkbasin 1\n\n"
                     "(end of examples)")
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "goal"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "obs"}]
    assert inject_demos(messages, block) == [{"role": "system", "content": f"S\n\n{block}"},
                                             *messages[1:]]
    assert messages[0]["content"] == "S"  # never modified
    assert inject_demos(messages[1:], block)[0] == {"role": "system", "content": block}
    assert inject_demos(messages, block, "before_observation") == [
        *messages[:3], {"role": "user", "content": block}, messages[3]]
    parts = [{"role": "system", "content": [{"type": "text", "text": "S"}]}]
    assert inject_demos(parts, block)[0]["content"][-1] == {"type": "text", "text": block}
    assert inject_demos(messages, "") == messages


def test_default_key_reads_goal_and_latest_observation():
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "the goal"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": [{"type": "text", "text": "latest"}]}]
    assert default_key(messages) == StepKey(goal="the goal", observation="latest")
    assert default_key([{"role": "system", "content": "s"}]) == StepKey(goal="", observation="")


# ---- the student's prompt in icd / distill mode ----------------------------------------

@pytest.fixture
def demo_store_path(collected) -> Path:
    return Path(collected["store"].path)


def student_requests(scripted) -> list[list[dict[str, Any]]]:
    return [messages for model, messages, _ in scripted.received if model == STUDENT]


def expected_demos(store_path: Path, key: StepKey, config: Retrieval) -> list[DemoWindow]:
    with DemoStore.open(store_path) as store:
        return store.search(key, config)


@pytest.mark.parametrize("mode", ["icd", "distill"])
def test_student_prompt_carries_the_retrieved_demos(scripted, log_url, demo_store_path, mode):
    goal, steps = alfworld_episode(CLEAN, "Mug", "Cabinet")  # unseen: a clean task
    scripted.scripts[STUDENT] = expert_teacher([(goal, steps)])
    scripted.scripts[TEACHER] = expert_teacher([(goal, steps)])
    scripted.received.clear()
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode=mode, log=log_url,
                           demos=demo_store_path, cascade={"sampling": "n"})
    with kd.episode_scope(task_id="unseen", goal=goal, task_type=CLEAN) as ep:
        prompts = run_task(goal, steps, upto=4)
        ep.finish(success=True)
    received = student_requests(scripted)
    logged = kd.log.steps(ep.episode_id)
    assert len(received) == len(prompts) == len(logged) == 4
    for prompt, sent, step in zip(prompts, received, logged, strict=True):
        key = StepKey(goal=goal, observation=prompt[-1]["content"])
        windows = expected_demos(demo_store_path, key, kd.retrieval)
        block = default_template(windows)
        assert len(windows) == 3  # k=6, but the store holds three episodes (one hit each)
        # Exactly the agent's messages, with the demos appended to its system message.
        assert sent == inject_demos(prompt, block, "system")
        assert sent[0]["content"] == f"{prompt[0]['content']}\n\n{block}"
        assert sent[1:] == prompt[1:]
        # The log records what the student saw.
        assert step.demo_block == block and step.demo_ids == [w.hit_row for w in windows]
        assert step.observation == prompt[-1]["content"]
        for row in step.demo_ids:
            _, _, demo_step = kd.demos.step(row)
            assert f"Observation: {demo_step.observation}\n" in block
            assert f"Action: {demo_step.action}" in block
        assert step.actor == "student"
    # At the sink, the best demo is the collected clean-then-place game's cleaning step.
    first = expected_demos(demo_store_path, StepKey(goal=goal, observation=prompts[3][-1][
        "content"]), kd.retrieval)
    assert first[0].task_type == CLEAN
    assert hit(first[0]).action == alfworld_episode(*COLLECT_TASKS[0])[1][3][2]  # clean plate
    if mode == "distill":
        assert all(params.get("n") == 3 for model, _, params in scripted.received
                   if model == STUDENT)
        assert [s.verdict for s in logged] == ["student"] * 4


def test_before_observation_placement_puts_demos_just_before_the_latest_observation(
        scripted, log_url, demo_store_path):
    goal, steps = alfworld_episode(HEAT, "Egg", "CounterTop")
    scripted.scripts[STUDENT] = expert_teacher([(goal, steps)])
    scripted.received.clear()
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="icd", log=log_url,
                           demos=demo_store_path, retrieval={"placement": "before_observation",
                                                             "k": 2, "window_after": 2})
    with kd.episode_scope(task_id="t", goal=goal):
        prompts = run_task(goal, steps, upto=3)
    for prompt, sent in zip(prompts, student_requests(scripted), strict=True):
        windows = expected_demos(demo_store_path,
                                 StepKey(goal=goal, observation=prompt[-1]["content"]),
                                 kd.retrieval)
        assert len(windows) == 2
        block = default_template(windows)
        assert sent == [*prompt[:-1], {"role": "user", "content": block}, prompt[-1]]
        assert sent[0] == prompt[0]  # the system message is untouched


def test_custom_template_and_key_hooks_are_used(scripted, log_url, demo_store_path):
    goal, steps = alfworld_episode(HEAT, "Egg", "CounterTop")
    scripted.scripts[STUDENT] = expert_teacher([(goal, steps)])
    scripted.received.clear()
    seen: list[list[DemoWindow]] = []

    def template(windows: list[DemoWindow]) -> str:
        seen.append(list(windows))
        return "DEMOS " + " | ".join(f"{w.task_type}: {hit(w).action}" for w in windows)

    def key(messages: list[dict[str, Any]]) -> StepKey:
        # Look up by a cooling goal whatever the agent is doing, and only the observation
        # text after its "Observation: " label.
        return StepKey(goal="cool some mug and put it in coffeemachine.",
                       observation=messages[-1]["content"].removeprefix("Observation: "))

    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="icd", log=log_url,
                           demos=demo_store_path, template=template, key=key,
                           retrieval={"k": 1})
    with kd.episode_scope(task_id="t") as ep:  # no goal given: the hook's goal is used
        prompts = run_task(goal, steps, upto=2)
    logged = kd.log.steps(ep.episode_id)
    for prompt, sent, windows, step in zip(prompts, student_requests(scripted), seen, logged,
                                           strict=True):
        (window,) = windows
        assert window.task_type == COOL  # retrieved by the hook's key, not the messages' goal
        block = f"DEMOS {COOL}: {hit(window).action}"
        assert sent[0]["content"] == f"{prompt[0]['content']}\n\n{block}"
        assert step.demo_block == block
        assert step.observation == prompt[-1]["content"].removeprefix("Observation: ")


# ---- CLI ----------------------------------------------------------------------------------

def test_cli_demos_build_and_stats_on_a_real_log(collected, log_url, tmp_path):
    kd = collected["kd"]
    runner = CliRunner()
    out = tmp_path / "cli-store"
    result = runner.invoke(app, ["demos", "build", "--log", log_url, "--run", kd.run_id,
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "added 3 episodes" in result.output
    result = runner.invoke(app, ["demos", "build", "--log", log_url, "--run", kd.run_id,
                                 "--out", str(out)])
    assert "added 0 episodes" in result.output  # rebuilding is idempotent

    result = runner.invoke(app, ["demos", "stats", str(out)])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["episodes"] == 3 and stats["steps"] == len(collected["store"])
    assert stats["task_types"] == {CLEAN: 1, COOL: 1, SIMPLE: 1}
    assert stats["embedding_model"] == "all-MiniLM-L6-v2" and stats["index"] == "flat"
    assert stats["size_bytes"] > 0 and stats["failed_episodes"] == 0

    failed = tmp_path / "with-failed"
    result = runner.invoke(app, ["demos", "build", "--log", log_url, "--run", kd.run_id,
                                 "--out", str(failed), "--include-failed"])
    assert "added 6 episodes" in result.output

    result = runner.invoke(app, ["demos", "build", "--log", log_url, "--run", kd.run_id,
                                 "--out", str(out), "--embedding-model",
                                 "sentence-transformers/paraphrase-MiniLM-L3-v2"])
    # rich wraps the message at the terminal width, wherever the (tmp) path pushes it
    assert result.exit_code == 2 and "built with embedding model" in " ".join(
        result.output.split())
    result = runner.invoke(app, ["demos", "stats", str(tmp_path / "nowhere")])
    assert result.exit_code == 2 and "no demo store" in result.output
