"""Real ALFWorld games through the full pipeline: expert teacher, scripted students, the log."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
from conftest import serve_llama

import agentkd
from agentkd.envs import closest_admissible, expert, react_agent
from agentkd.envs.alfworld import AlfWorldEnv, current_expert_action, data_dir, list_games
from agentkd.envs.bench import BenchConfig, plan_games, run_bench, share_cores, stratified
from agentkd.local_models import available_cores

STUDENT = "scripted/student"


def test_data_dir_errors_say_how_to_get_the_data(tmp_path, monkeypatch):
    with pytest.raises(agentkd.ConfigError, match="alfworld-download"):
        data_dir(tmp_path)
    with pytest.raises(agentkd.InputError, match="unknown ALFWorld split"):
        list_games("valid_nowhere")


def test_alfworld_data_and_explicit_data_win_over_the_bundled_fallback(tmp_path, monkeypatch):
    from agentkd.envs.alfworld import _SHARED_DATA

    def data_folder(name):
        folder = tmp_path / name
        (folder / "json_2.1.1").mkdir(parents=True)
        (folder / "logic").mkdir()
        (folder / "logic" / "alfred.pddl").write_text("")
        return folder

    assert _SHARED_DATA.is_dir(), "the bundled fallback exists here, so the order matters"
    mine, explicit = data_folder("mine"), data_folder("explicit")
    monkeypatch.setenv("ALFWORLD_DATA", str(mine))
    assert data_dir() == mine.resolve()
    assert data_dir(explicit) == explicit.resolve()
    monkeypatch.setenv("ALFWORLD_DATA", str(tmp_path / "empty"))  # no data there: fallback
    assert data_dir() == _SHARED_DATA.resolve()
    monkeypatch.delenv("ALFWORLD_DATA")
    assert data_dir() == _SHARED_DATA.resolve()


def test_a_step_the_handcoded_expert_crashes_on_is_still_taken():
    # A student's walk (seeded random, from benchmarks/rescue.py) after which alfworld's
    # handcoded expert, planning its next action inside step(), draws from an empty list.
    game = next(g for g in list_games("valid_seen")
                if "KeyChain-None-DeskLamp-327/trial_T20190906_202601_548273" in str(g))
    walk = ["go to drawer 3", "inventory", "look", "go to shelf 4", "go to dresser 1",
            "go to shelf 5", "go to shelf 3", "take keychain 1 from shelf 3", "go to bed 1"]
    env = AlfWorldEnv(game)
    try:
        env.reset()
        for action in walk:
            env.step(action)
        feedback, reward, done, info = env.step("go to drawer 7")
        assert feedback == ("You arrive at drawer 7. "
                            "On the drawer 7, you see a cd 2, and a keychain 4.")
        assert (reward, done, info["expert_action"]) == (0.0, False, "look")
        assert env.history[-1] == ("go to drawer 7", feedback)
        for _ in range(20):  # the rescuing teacher still finishes the task from here
            if env.step(env.teacher_action("rescue"))[2]:
                break
        assert env.won
    finally:
        env.close()


def test_games_are_real_and_each_env_is_its_own_game():
    games = list_games("valid_seen")
    assert len(games) == 140
    a, b = AlfWorldEnv(games[0]), AlfWorldEnv(games[1])
    try:
        a.reset(), b.reset()
        assert a.goal != b.goal and a.task_id != b.task_id
        # Winning one game must not leak into the other (no shared env id).
        while not a.won:
            a.step(a.expert_action)
        assert a.won and not b.won
        assert b.step("fly to the moon")[0] == "Nothing happens."
    finally:
        a.close(), b.close()


def expert_trajectory(game, seed=0, max_steps=30):
    env = AlfWorldEnv(game, seed=seed)
    actions = []
    try:
        env.reset()
        while not env.won and len(actions) < max_steps:
            actions.append(env.expert_action)
            env.step(actions[-1])
        return actions, env.won
    finally:
        env.close()


def test_expert_trajectory_depends_only_on_game_and_seed():
    import random
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    # This game's expert picks randomly among objects; unseeded, it was won in 12 steps in one
    # process and lost at the 30-step cap in another.
    game = list_games("train")[1]
    random.seed(1)
    first = expert_trajectory(game)
    assert first[1], "the seeded expert wins this game"
    random.seed(2)
    other = AlfWorldEnv(list_games("train")[0])  # another game interleaved with this one
    try:
        other.reset()
        assert expert_trajectory(game) == first
    finally:
        other.close()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        assert pool.submit(expert_trajectory, game).result() == first


def test_system_prompt_names_the_verbs_the_expert_uses():
    from agentkd.envs.react import SYSTEM_PROMPT

    shapes = SYSTEM_PROMPT.split("Commands look like:")[1]
    game = stratified(list_games("valid_seen"), 2)[1]  # pick_and_place: go, take, move
    env = AlfWorldEnv(game)
    verbs = set()
    try:
        env.reset()
        while not env.won:
            action = env.expert_action
            verbs.add(action.split()[0])
            env.step(action)
    finally:
        env.close()
    assert "move" in verbs
    named = set(re.findall(r"(?:^|, )([a-z]+)", shapes.strip()))
    assert verbs <= named, verbs - named


def test_stratified_subset_covers_every_task_type_of_a_real_split():
    games = list_games("valid_seen")
    def task_type(game):
        return game.parent.parent.name.split("-", 1)[0]
    assert {task_type(g) for g in games[:6]} != {task_type(g) for g in games}  # sorted clusters

    subset = stratified(games, 6)
    assert len({task_type(g) for g in subset}) == 6 == len({task_type(g) for g in games})
    assert stratified(games, 8)[:6] == subset  # growing N only appends: runs stay resumable
    assert set(stratified(games, len(games) + 5)) == set(games)

    planned, _ = plan_games(BenchConfig(mode="teacher", episodes=6, stratify=True), "r")
    assert planned == subset
    # An offset skips games of the stratified order: the next six are new, and typed alike.
    after, _ = plan_games(BenchConfig(mode="teacher", episodes=6, offset=6, stratify=True),
                          "r")
    assert after == stratified(games, 12)[6:] and not set(after) & set(subset)
    assert sorted(map(task_type, after)) == sorted(map(task_type, subset))
    sorted_after, _ = plan_games(BenchConfig(mode="teacher", episodes=6, offset=6), "r")
    assert sorted_after == games[6:12]


def test_closest_admissible_maps_typos_and_rejects_nonsense():
    admissible = ["go to desk 1", "take mug 1 from desk 1", "look"]
    assert closest_admissible("Go to desk 1.", admissible) == "go to desk 1"
    assert closest_admissible("take mug1 from desk 1", admissible) == "take mug 1 from desk 1"
    assert closest_admissible("launch the rocket", admissible) is None


def test_a_reply_handling_an_object_maps_only_to_commands_on_that_object():
    here = ["go to sofa 1", "take box 1 from coffeetable 1", "take book 2 from coffeetable 1"]
    assert closest_admissible("take book 1 from coffeetable 1", here) == \
        "take book 2 from coffeetable 1"  # another instance of the object named
    no_book = here[:2]  # "take box 1 ..." is the closest string, and the wrong thing to take
    assert closest_admissible("take book 1 from coffeetable 1", no_book) is None
    assert closest_admissible("put book 1 in sofa 1", ["move book 1 to sofa 1"]) == \
        "move book 1 to sofa 1"  # the older verb, the same object
    assert closest_admissible("go to sofa 2", here) == "go to sofa 1"  # places still map


@pytest.mark.parametrize(("reply", "command"), [
    ("go to desk 1, take mug 1 from desk 1", "go to desk 1"),   # a chain: its first command
    ("go to dsk 1 and then look", "go to desk 1"),
    ("open drawer 1; take mug 1 from desk 1", "take mug 1 from desk 1"),  # first that matches
    ("launch the rocket, then fly to the moon", None),             # no clause is a command
    ("thought: the mug is on the desk", None),
])
def test_closest_admissible_takes_the_first_command_of_a_chain(reply, command):
    admissible = ["go to desk 1", "take mug 1 from desk 1", "look"]
    assert closest_admissible(reply, admissible) == command


def test_react_key_leaves_the_admissible_commands_and_the_task_out_of_the_observation():
    from agentkd.envs import react_key
    from agentkd.envs.react import _prompt

    intro = "You are in the middle of a room.\n\nYour task is to: put a mug in the desk."
    first = react_key(_prompt(intro, [], intro, ["go to desk 1", "look"], history=12))
    assert (first.goal, first.observation) == ("put a mug in the desk.",
                                               "You are in the middle of a room.")
    later = react_key(_prompt(intro, [("Action: go to desk 1", "You arrive at desk 1.")],
                              "You arrive at desk 1.", ["take mug 1 from desk 1"], history=12))
    assert (later.goal, later.observation, later.plan) == (
        "put a mug in the desk.", "You arrive at desk 1.", "")


def test_every_observation_after_the_first_restates_the_task():
    from agentkd.envs.react import _prompt

    intro = "You are in the middle of a room.\n\nYour task is to: put a mug in the desk."
    turns = [("Action: go to desk 1", "You arrive at desk 1."),
             ("Action: take mug 1 from desk 1", "You pick up the mug 1 from the desk 1.")]
    messages = _prompt(intro, turns, turns[-1][1], ["go to desk 1"], history=12)
    users = [m["content"] for m in messages if m["role"] == "user"]
    assert users[0] == intro  # states the task once, as the game wrote it
    assert users[1] == "Observation: You arrive at desk 1.\nYour task is to: put a mug in the desk."
    assert users[2].endswith("\nAdmissible commands: go to desk 1\n"
                             "Your task is to: put a mug in the desk.")
    untold = _prompt("A room.", turns[:1], turns[0][1], None, history=12)
    assert untold[-1]["content"] == "Observation: You arrive at desk 1."  # no task: none restated


def test_listed_admissible_reads_back_what_format_observation_listed():
    from agentkd.envs.react import format_observation, listed_admissible

    commands = ["go to desk 1", "take mug 1 from desk 1", "look"]
    assert listed_admissible(format_observation("You see a desk 1.", commands)) == commands
    assert listed_admissible(format_observation("You see a desk 1.", commands,
                                                task="put a mug in desk.")) == commands
    assert listed_admissible(format_observation("You see a desk 1.", None)) == []
    assert listed_admissible("Admissible commands: look") == []  # not the agent's layout


def test_admissible_command_is_the_cascades_validity_in_the_game_running():
    from agentkd.envs.alfworld import admissible_command, current_admissible

    token = current_admissible.set(["go to desk 1", "look"])
    try:
        assert admissible_command("go to desk 1, take mug 1 from desk 1")
        assert not admissible_command("take mug 1 from desk 1")
    finally:
        current_admissible.reset(token)
    token = current_admissible.set(None)  # no list known: nothing can be ruled out
    try:
        assert admissible_command("take mug 1 from desk 1")
    finally:
        current_admissible.reset(token)


def test_taking_an_object_the_task_does_not_name_is_no_valid_action_in_a_real_game():
    from agentkd.envs.alfworld import admissible_command, current_admissible, current_game

    env = AlfWorldEnv(stratified(list_games("valid_seen"), 1)[0])
    try:
        env.reset()  # publishes the game: its task is "put a alarmclock in desk."
        assert "alarmclock" in env.goal
        token = current_admissible.set(["take alarmclock 1 from desk 1",
                                        "take pencil 1 from desk 1", "move pencil 1 to desk 1"])
        try:
            assert admissible_command("take alarmclock 1 from desk 1")
            assert not admissible_command("take pencil 1 from desk 1")  # not the task's
            assert admissible_command("move pencil 1 to desk 1")  # putting it back is fine
        finally:
            current_admissible.reset(token)
    finally:
        env.close()
        current_game.set(None)


def test_expert_outside_an_episode_is_a_clear_error(log_url):
    from agentkd.envs.alfworld import current_game

    expert.register()
    token = current_game.set(None)  # earlier tests in this thread played games
    try:
        for model in expert.MODELS:
            kd = agentkd.Distiller(teacher=model, mode="teacher", log=log_url)
            with pytest.raises(agentkd.TeacherError, match="inside an ALFWorld episode"):
                kd.completion(messages=[{"role": "user", "content": "go"}])
    finally:
        current_game.reset(token)


def _expert_like_student(messages, n):
    return [f"Thought: follow the plan.\nAction: {current_expert_action.get()}"] * n


def test_collect_then_distill_on_real_games(scripted, log_url, tmp_path):
    demos = str(tmp_path / "demos")
    scripted.scripts[STUDENT] = _expert_like_student
    common = {"log": log_url, "demos": demos, "max_steps": 40}
    collect_run, collected = run_bench(BenchConfig(mode="collect", split="train", episodes=2,
                                                   **common))
    assert [o.success for o in collected] == [True, True]
    # valid_seen game 0: the expert wins it in 5 steps every time (game 1 takes it 49-55).
    distill_run, outcomes = run_bench(BenchConfig(mode="distill", split="valid_seen", episodes=1,
                                                  student=STUDENT, **common))
    assert all(o.success and o.teacher_steps == 0 for o in outcomes), outcomes
    # The baseline: the same teacher alone on the same game.
    teacher_run, _ = run_bench(BenchConfig(mode="teacher", split="valid_seen", episodes=1,
                                           log=log_url, max_steps=40))

    log = agentkd.TrajectoryLog(log_url)
    summaries = {s.mode: s for s in agentkd.run_summaries(log)}
    assert summaries["collect"].label == "priced oracle teacher"
    assert summaries["distill"].teacher_call_rate == 0.0
    (teacher_episode,) = log.episodes(teacher_run)
    (distill_episode,) = log.episodes(distill_run)
    collect_cost = sum(e.cost_usd for e in log.episodes(collect_run))
    assert summaries["distill"].relative_cost == pytest.approx(
        distill_episode.cost_usd / teacher_episode.cost_usd)
    assert summaries["distill"].break_even_episodes == pytest.approx(
        collect_cost / (teacher_episode.cost_usd - distill_episode.cost_usd))
    (episode,) = log.episodes(distill_run)
    steps = log.steps(episode.id)
    assert all(s.verdict == "student" and s.demo_block for s in steps)
    assert "Expert examples in similar situations" in steps[0].demo_block
    # Every student step's samples carry the action the env then executed.
    assert all(s.samples[0]["action"] == s.final_action for s in steps)


def test_disagreeing_student_defers_to_the_expert(scripted, log_url, tmp_path):
    def split_student(messages, n):  # two samples follow the expert, one does not
        right = f"Action: {current_expert_action.get()}"
        return [right, "Action: inventory", right][:n]

    scripted.scripts[STUDENT] = split_student
    run_bench(BenchConfig(mode="collect", split="train", episodes=1, log=log_url,
                          demos=str(tmp_path / "d")))
    run_bench(BenchConfig(mode="teacher", split="valid_seen", episodes=1, log=log_url))
    run_id, (outcome,) = run_bench(BenchConfig(
        mode="distill", split="valid_seen", episodes=1, student=STUDENT, log=log_url,
        demos=str(tmp_path / "d"), cascade={"samples": 3}))
    assert outcome.success and outcome.teacher_steps == outcome.steps
    (summary,) = agentkd.run_summaries(agentkd.TrajectoryLog(log_url), run_ids=[run_id])
    # Same game as the teacher run, every step deferred: the student samples are pure extra.
    assert summary.teacher_call_rate == 1.0 and summary.relative_cost > 1
    assert summary.break_even_episodes is None


def test_parallel_collect_fills_one_demo_store_from_the_log(log_url, tmp_path):
    from agentkd.retrieval import DemoStore

    demos = str(tmp_path / "demos")
    config = BenchConfig(mode="collect", split="train", episodes=3, workers=2, log=log_url,
                         demos=demos, run="parallel-collect", max_steps=40)
    _, outcomes = run_bench(config)
    won = sum(o.success for o in outcomes)
    # The expert is seeded per game: it wins all three within 40 steps, every time.
    assert (len(outcomes), won) == (3, 3)
    store = DemoStore.open(demos)
    assert len(store.sources()) == won
    # A resumed run with nothing left to play adds nothing twice.
    run_bench(BenchConfig(mode="collect", split="train", episodes=3, workers=2, log=log_url,
                          demos=demos, run="parallel-collect", resume=True, max_steps=40))
    assert len(DemoStore.open(demos).sources()) == won


@pytest.mark.slow  # two spawned workers, each loading agentkd and ALFWorld
def test_ctrl_c_stops_the_workers_mid_game_and_a_resume_replays_their_games(log_url):
    config = BenchConfig(mode="teacher", split="valid_seen", episodes=8, workers=2, log=log_url,
                         run="stopped", stratify=True)

    def ctrl_c(_outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_bench(config, on_episode=ctrl_c)
    log = agentkd.TrajectoryLog(log_url)
    finished = [e for e in log.episodes("stopped") if e.status in ("success", "failure")]
    # The game that reported and at most the other worker's: not the games queued behind them
    # (the executor hands out one more game than it has workers).
    assert 1 <= len(finished) <= 2
    _, replayed = run_bench(dataclasses.replace(config, resume=True))
    assert len(replayed) == 8 - len(finished)
    played = [e for e in log.episodes("stopped") if e.status != "interrupted"]
    assert len(played) == 8 and all(e.status in ("success", "failure") for e in played)


def test_a_bad_config_in_parallel_workers_reports_its_cause_not_a_dead_worker(log_url):
    config = BenchConfig(mode="icd", student=STUDENT, split="valid_seen", episodes=2,
                         workers=2, log=log_url, run="no-demos")
    with pytest.raises(agentkd.InputError, match="retrieves demos"):
        run_bench(config)


def test_resume_skips_finished_games(log_url, tmp_path):
    config = BenchConfig(mode="teacher", split="valid_seen", episodes=2, log=log_url,
                         run="resumable")
    run_bench(config)
    _, outcomes = run_bench(BenchConfig(mode="teacher", split="valid_seen", episodes=3,
                                        log=log_url, run="resumable", resume=True))
    assert len(outcomes) == 1
    episodes = agentkd.TrajectoryLog(log_url).episodes("resumable")
    assert len({e.task_id for e in episodes}) == len(episodes) == 3


def test_bench_prices_unpriced_models_and_rejects_bad_price_specs(scripted, log_url):
    from agentkd.envs.cli import parse_price

    assert parse_price("openai/qwen=0.05,0.1") == ("openai/qwen", (0.05, 0.1))
    for bad in ("openai/qwen", "=1,2", "m=1", "m=a,b", "m=-1,2"):
        with pytest.raises(agentkd.InputError, match="MODEL=IN,OUT"):
            parse_price(bad)

    scripted.scripts["scripted/own-server"] = lambda messages, n: ["Action: look"] * n
    run_id, _ = run_bench(BenchConfig(mode="student", student="scripted/own-server",
                                      episodes=1, max_steps=1, log=log_url,
                                      prices={"scripted/own-server": (1000.0, 0.0)}))
    log = agentkd.TrajectoryLog(log_url)
    (call,) = log.calls(log.episodes(run_id)[0].id)
    assert call.cost_usd == pytest.approx(call.prompt_tokens * 1000 / 1e6)


def test_parallel_workers_share_the_cores_unless_told(monkeypatch):
    monkeypatch.setenv("AGENTKD_LOCAL_N_THREADS", "")  # restored after the test, set or not
    monkeypatch.delenv("AGENTKD_LOCAL_N_THREADS")
    share_cores(1)
    assert "AGENTKD_LOCAL_N_THREADS" not in os.environ
    share_cores(2 * available_cores())
    assert os.environ["AGENTKD_LOCAL_N_THREADS"] == "1"
    monkeypatch.setenv("AGENTKD_LOCAL_N_THREADS", "3")
    share_cores(2)
    assert os.environ["AGENTKD_LOCAL_N_THREADS"] == "3"


def test_reference_agent_counts_invalid_actions(scripted, log_url):
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: launch rocket"] * n
    env = AlfWorldEnv(list_games("valid_seen")[0])
    try:
        result = react_agent(env, "scripted/teacher", max_steps=3)
    finally:
        env.close()
    assert result.invalid_actions == 3 and not result.success


def test_alfworld_version_is_the_one_we_rely_on():
    import importlib.metadata

    from agentkd.envs.alfworld import TESTED_ALFWORLD_VERSION

    assert importlib.metadata.version("alfworld") == TESTED_ALFWORLD_VERSION


def test_appworld_without_its_package_or_data_says_how_to_install(monkeypatch):
    import sys

    from agentkd.envs.appworld import AppWorldEnv, list_tasks

    monkeypatch.setitem(sys.modules, "appworld", None)  # as on a machine without appworld
    with pytest.raises(agentkd.ConfigError, match="appworld download data"):
        list_tasks("train")
    with pytest.raises(agentkd.ConfigError, match="pip install appworld"):
        AppWorldEnv("82e2fac_1").reset()
    with pytest.raises(agentkd.InputError, match="unknown AppWorld split"):
        list_tasks("nope")


# A plain skip, not `require`: the data is not obtainable here, so CI cannot have it either.
@pytest.mark.skip(reason="AppWorld's task data cannot be downloaded in this offline sandbox "
                         "(appworld download data needs the network)")
def test_appworld_task_round_trip():  # pragma: no cover - runs where the data exists
    from agentkd.envs.appworld import AppWorldEnv, list_tasks

    env = AppWorldEnv(list_tasks("dev")[0])
    observation, _ = env.reset()
    assert env.goal and "Task:" in observation
    output, _, done, _ = env.step("print(apis.api_docs.show_app_descriptions())")
    assert output and not done
    env.close()


@pytest.mark.slow
def test_real_local_student_through_the_full_pipeline(log_url, tmp_path):
    """A real GGUF student (llama.cpp) on a real game: 3 samples in one request, gate, log."""
    demos = str(tmp_path / "demos")
    run_bench(BenchConfig(mode="collect", split="train", episodes=1, log=log_url, demos=demos))
    run_id, (outcome,) = run_bench(BenchConfig(
        mode="distill", split="valid_seen", episodes=1, student="local/smollm2-135m",
        log=log_url, demos=demos, max_steps=3, retrieval={"k": 2}))
    assert outcome.steps == 3
    log = agentkd.TrajectoryLog(log_url)
    (episode,) = log.episodes(run_id)
    calls = log.calls(episode.id)
    student_calls = [c for c in calls if c.role == "student"]
    assert len(student_calls) == 3 and all(c.n == 3 and c.error is None for c in student_calls)
    assert all(c.prompt_tokens > 0 and c.cost_usd > 0 for c in student_calls)
    steps = log.steps(episode.id)
    assert all(len(s.samples) == 3 and s.verdict in ("student", "deferred") for s in steps)
    assert sum(s.actor == "teacher" for s in steps) == outcome.teacher_steps


@pytest.fixture
def llama_cpp_server():
    """SmolLM2 behind `python -m agentkd.llama_server`: an OpenAI-compatible API."""
    with serve_llama("local/smollm2-135m", "smollm2") as base:
        yield base


@pytest.mark.slow
def test_openai_compatible_server_as_student(llama_cpp_server, log_url, tmp_path, monkeypatch):
    """The same bench flow with the student behind an OpenAI-compatible server, which ignores
    `n`: the cascade tops the samples up with extra requests and the gate still sees three."""
    monkeypatch.setenv("OPENAI_API_BASE", llama_cpp_server)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-local-not-checked")
    agentkd.register_price("openai/smollm2", 0.01, 0.02)
    demos = str(tmp_path / "demos")
    run_bench(BenchConfig(mode="collect", split="train", episodes=1, log=log_url, demos=demos))
    run_id, (outcome,) = run_bench(BenchConfig(
        mode="distill", split="valid_seen", episodes=1, student="openai/smollm2",
        log=log_url, demos=demos, max_steps=2, retrieval={"k": 2}))
    assert outcome.steps == 2
    log = agentkd.TrajectoryLog(log_url)
    (episode,) = log.episodes(run_id)
    student_calls = [c for c in log.calls(episode.id) if c.role == "student"]
    assert student_calls
    assert [(c.model, c.error) for c in student_calls] == [("openai/smollm2", None)] * len(
        student_calls)
    assert all(c.prompt_tokens > 0 and c.cost_usd > 0 for c in student_calls)
    assert all(len(s.samples) == 3 for s in log.steps(episode.id))


def test_bench_diagnostics_count_loops_and_mapped_actions(scripted, log_url):
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "alfworld.py"
    spec = importlib.util.spec_from_file_location("alfworld_benchmark", script)
    assert spec and spec.loader
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)

    # "lok" is not admissible as written; the agent maps it to "look", which changes nothing
    # after the first time: steps 2 and 3 repeat step 1.
    scripted.scripts["scripted/looper"] = lambda messages, n: ["Action: lok"] * n
    run_id, _ = run_bench(BenchConfig(mode="student", student="scripted/looper", episodes=1,
                                      max_steps=3, log=log_url))
    diagnostics = benchmark.step_diagnostics(agentkd.TrajectoryLog(log_url), run_id)
    assert diagnostics["steps"] == 3
    assert diagnostics["repeat_share"] == pytest.approx(1 / 3)
    assert diagnostics["mapped_share"] == 1.0
    assert diagnostics["deferred_steps"] == 0


def test_bench_cli_defer_loops_defers_a_student_that_repeats_itself(scripted, tmp_path):
    from typer.testing import CliRunner

    from agentkd.cli import app
    from agentkd.retrieval import DemoStore

    DemoStore.open(tmp_path / "demos", create=True).close()
    scripted.scripts["scripted/looker"] = lambda messages, n: ["Action: look"] * n
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(app, [
        "bench", "alfworld", "--mode", "distill", "--student", "scripted/looker",
        "--demos", str(tmp_path / "demos"), "--episodes", "1", "--max-steps", "3",
        "--log", url, "--run", "loops", "--defer-loops"])
    assert result.exit_code == 0, result.output
    log = agentkd.TrajectoryLog(url)
    steps = log.steps(log.episodes("loops")[0].id)
    # The first 'look' changes the observation; the second is sent back to the same one.
    assert [s.signals["repeat"] for s in steps] == [False, False, True]
    assert [s.verdict for s in steps] == ["student", "student", "deferred"]
