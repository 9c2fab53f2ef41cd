"""ALFWorld benchmark runs: many games, one mode, one logged run, resumable.

Each game is one episode of the reference ReAct agent inside a Distiller episode scope,
played by `play_game`, the one code path for a game wherever it runs. With `workers > 1` games
run in a pool of processes on this host, and with `ray` on a Ray cluster as actors
(`agentkd.envs.ray_runner`); each worker has its own Distiller (same run id, same log) and its
own environment per game. `resume=True` skips games the run already finished and marks
episodes left running by a dead worker as interrupted. A demo store has one writer: parallel
collect workers only log, and the parent adds the run's successful episodes to the store from
the log when the games are done (idempotent, so a resumed run completes it).
`validate` raises a configuration error (an unknown model, icd/distill without a store, a bad
cap) before any game is played, so the command line reports it before drawing progress.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import closing
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from agentkd.config import Budget, Cascade, Retrieval
from agentkd.costs import register_price
from agentkd.errors import AgentKDError, BudgetExceeded, InputError

_worker: dict[str, Any] = {}


@dataclass
class BenchConfig:
    """One `agentkd bench alfworld` invocation."""

    mode: str
    teacher: str = "alfworld/expert"
    student: str | None = None
    split: str = "valid_seen"
    episodes: int | None = None
    offset: int = 0
    """Skip the first `offset` games of the order played: the sorted split, or with
    `stratify` the stratified order, so `offset=200` picks games disjoint from a run's first
    200 stratified ones."""
    stratify: bool = False
    """Take the `episodes` games round-robin over task types (all six ALFWorld types in a
    subset of six) instead of the first ones in sorted order, which cluster by type."""
    workers: int = 1
    """Worker processes on this host; with `ray`, the number of actors (0: as many as the
    cluster's nodes hold, see `ray_cpus`)."""
    ray: str | None = None
    """Play on a Ray cluster instead: 'auto' (the cluster this host joined with `ray start`),
    'local' (a new one-host cluster for this process) or a head's address (HOST:PORT or
    ray://HOST:PORT). Needs the `agentkd[ray]` extra."""
    ray_cpus: float = 1.0
    """CPUs each actor declares (a local student's llama.cpp threads follow it)."""
    ray_memory_mb: int | None = None
    """Memory each actor declares (default: `ray_runner.default_memory_mb`)."""
    ray_gpus: float = 0.0
    """GPUs each actor declares, for a student served inside the actor."""
    demos: str | None = None
    grow_demos: bool = False
    """Distill: the teacher's steps of won episodes join `demos` as the run goes (one worker:
    the store has one writer)."""
    log: str = "sqlite:///agentkd.db"
    run: str | None = None
    resume: bool = False
    max_steps: int = 50
    history: int = 12
    data: str | None = None
    cascade: dict[str, Any] = field(default_factory=dict)
    retrieval: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] = field(default_factory=dict)
    """`agentkd.Budget` caps: an episode over its cap ends with status 'budget' and the run
    goes on; a run over its cap stops with `BudgetExceeded` (resume it with a higher cap)."""
    prices: dict[str, tuple[float, float]] = field(default_factory=dict)
    """USD per million input / output tokens for models litellm does not price (a model behind
    your own server), registered in every worker."""
    planned: tuple[str, list[Path]] | None = field(default=None, repr=False, compare=False)
    """(run id, games still to play), set by `plan_games` on resume: `run_bench` plays that
    plan, so a caller that plans first (to size a progress bar) never replays finished games."""

    def run_id(self) -> str:
        return self.run or f"alfworld-{self.split}-{self.mode}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class EpisodeOutcome:
    task_id: str
    success: bool
    steps: int
    invalid_actions: int
    cost_usd: float
    teacher_steps: int
    node: str | None = None
    """The Ray node that played it (None off Ray)."""


def _distiller(config: BenchConfig, run_id: str) -> Any:
    from agentkd.distiller import Distiller
    from agentkd.envs import expert
    from agentkd.envs.alfworld import admissible_command, same_admissible_command
    from agentkd.envs.react import react_key

    expert.register()
    for model, (input_per_mtok, output_per_mtok) in config.prices.items():
        register_price(model, input_per_mtok, output_per_mtok)
    return Distiller(
        teacher=config.teacher, student=config.student, mode=config.mode,
        cascade=Cascade(**config.cascade), retrieval=Retrieval(**config.retrieval),
        budget=Budget(**config.budget),
        demos=None if _demos_written_by_parent(config) else config.demos, log=config.log,
        run=run_id, grow_demos=config.grow_demos,
        equivalent=same_admissible_command, valid=admissible_command, key=react_key,
    )


def check_model(model: str) -> None:
    """Fail now, not at the model's first call, on an ALFWorld teacher or a local model that
    does not exist (or is not installed). Other providers' names are theirs to check."""
    from agentkd import local_models
    from agentkd.envs import expert

    if model.startswith("alfworld/") and model not in expert.MODELS:
        raise InputError(f"unknown ALFWorld teacher {model!r}; choose one of "
                         f"{', '.join(expert.MODELS)}")
    if model.startswith(f"{local_models.PROVIDER}/"):
        local_models.model_path(model)


def validate(config: BenchConfig, run_id: str) -> None:
    """Raise the configuration error the first game would raise, before any game is played.

    Checks the caps and the models, then builds the run's Distiller here, which checks the
    mode, the cascade, the retrieval settings and the demo store. With one worker the games
    then run in that Distiller; with more, each worker builds its own.
    """
    if _worker.get("ready") == (config, run_id):
        return  # validated in this process already (the CLI does it before its progress bar)
    # With Ray, 0 workers means one actor per slot the cluster has.
    least = {"workers": 0 if config.ray is not None else 1, "max_steps": 1}
    for name, value in (("workers", config.workers), ("max_steps", config.max_steps)):
        if value < least[name]:
            raise InputError(f"--{name.replace('_', '-')} must be >= {least[name]}, got {value}")
    for model in (config.teacher, config.student):
        if model:
            check_model(model)
    if config.ray is not None:
        from agentkd.envs import ray_runner

        ray_runner.check_cluster(config)  # Ray installed, the log fits the cluster, actors fit
    kd = _distiller(config, run_id)
    _worker.clear()
    if parallel(config):
        kd.close()  # each worker builds its own
    else:
        _worker.update(kd=kd, config=config)
    _worker["ready"] = (config, run_id)


def parallel(config: BenchConfig) -> bool:
    """Whether games run in workers of their own (a process pool or Ray actors)."""
    return config.ray is not None or config.workers > 1


def share_cores(workers: int) -> None:
    """Give each of `workers` processes its share of the cores for local models.

    Each worker loads its own local model; W workers using all cores each would oversubscribe
    the CPU and run slower than one. An explicit AGENTKD_LOCAL_N_THREADS wins.
    """
    if workers > 1 and not os.environ.get("AGENTKD_LOCAL_N_THREADS"):
        from agentkd.local_models import available_cores

        os.environ["AGENTKD_LOCAL_N_THREADS"] = str(max(1, available_cores() // workers))


def _init_worker(config: BenchConfig, run_id: str) -> None:
    share_cores(config.workers)
    try:
        _worker["kd"] = _distiller(config, run_id)
    except AgentKDError as exc:
        # An initializer that raises breaks the whole pool, which the parent can only report as
        # a dead worker; kept here, the first game raises it and the parent shows the cause.
        _worker["setup_error"] = exc
    _worker["config"] = config


def play(game_file: str) -> EpisodeOutcome:
    """Play one game in this process's Distiller (set up by `_init_worker`)."""
    if "setup_error" in _worker:
        raise _worker["setup_error"]
    return play_game(_worker["kd"], _worker["config"], game_file)


def play_game(kd: Any, config: BenchConfig, game_file: str) -> EpisodeOutcome:
    """Play one game in `kd`: the one code path for a game, in this process, a pool worker or
    a Ray actor."""
    from agentkd.envs.alfworld import AlfWorldEnv
    from agentkd.envs.react import react_agent

    env = AlfWorldEnv(game_file)
    try:
        first, _ = env.reset()
        scope = None
        try:
            with kd.episode_scope(task_id=env.task_id, goal=env.goal,
                                  task_type=env.task_type) as scope:
                result = react_agent(env, kd.teacher, max_steps=config.max_steps,
                                     history=config.history, first_observation=first)
                # The cap goes with the outcome: a report judges the teacher at the same cap.
                scope.finish(success=result.success, reward=float(result.success),
                             invalid_actions=result.invalid_actions,
                             max_steps=config.max_steps)
        except BudgetExceeded as exc:
            if exc.scope != "episode" or scope is None:
                raise  # a run cap stops the whole run
            # The episode is logged with status 'budget'; the run goes on with the next game.
            kd.close()
            return EpisodeOutcome(env.task_id, False, scope.steps, 0, scope.cost_usd,
                                  _teacher_steps(kd, scope.episode_id))
        kd.close()
        return EpisodeOutcome(env.task_id, result.success, result.steps,
                              result.invalid_actions, scope.cost_usd,
                              _teacher_steps(kd, scope.episode_id))
    finally:
        env.close()


def _teacher_steps(kd: Any, episode_id: int) -> int:
    return sum(1 for s in kd.log.steps(episode_id) if s.actor == "teacher")


def plan_games(config: BenchConfig, run_id: str) -> tuple[list[Path], int]:
    """(games still to play, games skipped because the run already finished them)."""
    from agentkd.envs.alfworld import AlfWorldEnv, list_games
    from agentkd.log import TrajectoryLog

    if config.grow_demos and parallel(config):
        raise InputError("--grow-demos writes the store as episodes finish, and a store has "
                         "one writer: use --workers 1 without --ray")
    games = list_games(config.split, config.data)
    if config.stratify:
        games = stratified(games, len(games))
    games = games[config.offset:]
    if config.episodes is not None:
        if config.episodes < 1:
            raise InputError("--episodes must be >= 1")
        games = games[: config.episodes]
    if not config.resume:
        return games, 0
    log = TrajectoryLog(config.log)
    log.mark_interrupted(run_id)
    done = log.finished_task_ids(run_id)
    todo = [g for g in games if AlfWorldEnv(g).task_id not in done]
    config.planned = (run_id, todo)
    return todo, len(games) - len(todo)


def stratified(games: list[Path], count: int) -> list[Path]:
    """`count` games taken round-robin over task types, each type's games in sorted order.

    The task type is the game folder's name up to the first '-' (e.g.
    `pick_heat_then_place_in_recep-Egg-None-Fridge-10`), so the subset is reproducible and
    needs no game to be opened.
    """
    by_type: dict[str, list[Path]] = {}
    for game in games:
        by_type.setdefault(game.parent.parent.name.split("-", 1)[0], []).append(game)
    queues = [by_type[task_type] for task_type in sorted(by_type)]
    picked: list[Path] = []
    for rank in range(max(map(len, queues), default=0)):
        picked += [queue[rank] for queue in queues if rank < len(queue)]
    return picked[:count]


def run_bench(config: BenchConfig, on_episode: Callable[[EpisodeOutcome], None] | None = None
              ) -> tuple[str, list[EpisodeOutcome]]:
    """Play the configured games; returns (run id, outcomes of the games played now)."""
    run_id = config.run_id()
    if config.planned is not None and config.planned[0] == run_id:
        games = config.planned[1]
    else:
        games, _ = plan_games(config, run_id)
    validate(config, run_id)
    outcomes: list[EpisodeOutcome] = []
    # closing: an error in on_episode (a Ctrl-C in the progress bar) stops the workers too.
    with closing(_play_all(config, run_id, [str(g) for g in games])) as played:
        for outcome in played:
            outcomes.append(outcome)
            if on_episode:
                on_episode(outcome)
    demos = _demos_written_by_parent(config)
    if demos is not None:
        from agentkd.log import TrajectoryLog
        from agentkd.retrieval import DemoStore
        from agentkd.retrieval.collect import demos_from_log

        demos_from_log(TrajectoryLog(config.log), run_id, DemoStore.open(demos, create=True))
    return run_id, outcomes


def _demos_written_by_parent(config: BenchConfig) -> str | None:
    """The demo store of a parallel collect run: its workers would race on the store's files
    (the store refuses a second writer), so the parent fills it from the log instead."""
    if config.mode == "collect" and parallel(config):
        return config.demos
    return None


def _play_all(config: BenchConfig, run_id: str, games: list[str]
              ) -> Generator[EpisodeOutcome, None, None]:
    if config.ray is not None:
        from agentkd.envs.ray_runner import play_on_ray

        yield from play_on_ray(config, run_id, games)
        return
    if config.workers <= 1:
        for game in games:  # in the Distiller `validate` built
            yield play(game)
        return
    # spawn: llama.cpp and torch do not survive fork with threads already running.
    with ProcessPoolExecutor(config.workers, mp_context=get_context("spawn"),
                             initializer=_init_worker, initargs=(config, run_id)) as pool:
        futures: list[Future[EpisodeOutcome]] = [pool.submit(play, g) for g in games]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool:
            pool.shutdown(cancel_futures=True)
            raise AgentKDError(
                f"a worker process of run {run_id!r} died (killed, or out of memory); every "
                f"step it served is in the log. Continue with --resume --run {run_id}: its "
                f"unfinished episodes are marked interrupted and played again") from None
        except BaseException:  # Ctrl-C, or a game's error: stop now, not after the queue
            _stop_workers(pool)
            raise


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Drop the queued games and kill the workers mid-game.

    `shutdown(cancel_futures=True)` alone waits for every game already handed to a worker
    (the executor queues one more than it has workers), minutes with a local student. The
    killed games' steps are in the log; a resumed run marks them interrupted and replays them.
    Python 3.14's `terminate_workers()` does this; 3.11 has only the executor's own table.
    """
    workers = list((pool._processes or {}).values())  # shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        process.terminate()
