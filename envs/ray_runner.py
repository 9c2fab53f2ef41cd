"""Benchmark games on a Ray cluster: one actor per environment worker (`BenchConfig.ray`).

Owns the checks made before any game (Ray installed, a server log when the cluster spans more
than one node, actors that fit on a node), the game actors, shipping the demo store to nodes
that do not see its folder, and the driver's loop that hands each actor one game at a time and
plays a game again on a fresh actor when its actor died (killed, out of memory, node lost).

Each actor builds its own Distiller on the run's id and log (`bench._distiller`) and plays with
`bench.play_game`, the code path the process pool and a single process use too. Only the
driver writes the demo store: actors read it (collect actors only log; the driver fills the
store from the log afterwards, see `bench.run_bench`). Ray is imported only here, and only
when a run asks for it: it is the optional `agentkd[ray]` extra.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import tarfile
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from agentkd.envs import bench
from agentkd.envs.bench import BenchConfig, EpisodeOutcome
from agentkd.errors import AgentKDError, ConfigError, InputError

MAX_ATTEMPTS = 3
"""Plays of one game whose actor died before the run gives up on it: a game that kills its
worker every time (out of memory) must not loop forever."""

BASE_MEMORY_MB = 1024
"""Memory an actor declares by default: one ALFWorld game, the agent and the Distiller. A
teacher-mode actor peaked at 557 MB resident (`benchmarks/ray_scale.py`); the rest is room for
the sentence embedder icd and distill load."""

LOCAL_MODEL_OVERHEAD = 1.25
"""A local student's resident size over its GGUF file (weights + KV cache and buffers)."""

_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-\[\]:]+:\d+$")
StoreShipment = tuple[str, dict[str, str], list[Any]]
"""(store folder as the driver sees it, {file: sha256}, [object ref of the folder's tar])."""


def import_ray() -> Any:
    """The `ray` module, or a ConfigError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray, which is not installed: "
                          "pip install 'agentkd[ray]'") from None
    return ray


def check_options(config: BenchConfig) -> None:
    """The Ray settings themselves, before anything connects."""
    address = config.ray or ""
    if address not in ("auto", "local") and not _ADDRESS.match(address):
        raise InputError(f"--ray {address!r}: expected auto (the cluster this host joined with "
                         f"`ray start`), local (a new cluster on this host) or a head's "
                         f"address HOST:PORT or ray://HOST:PORT")
    if config.ray_cpus <= 0:
        raise InputError(f"--ray-cpus must be > 0, got {config.ray_cpus}")
    if config.ray_gpus < 0:
        raise InputError(f"--ray-gpus must be >= 0, got {config.ray_gpus}")
    if config.ray_memory_mb is not None and config.ray_memory_mb < 1:
        raise InputError(f"--ray-memory-mb must be >= 1, got {config.ray_memory_mb}")


def connect(address: str) -> Any:
    """Join the cluster at `address` (once per process); returns the `ray` module."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    # The driver draws a progress bar: actors' output stays in Ray's logs
    # (/tmp/ray/session_latest/logs), and Ray's own start-up lines are not shown.
    kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address == "local":
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise ConfigError(f"cannot join a Ray cluster at {address!r} ({exc}); start one "
                          f"with `ray start --head`, or pass --ray local for a one-host "
                          f"cluster. A cluster with token authentication needs "
                          f"RAY_AUTH_MODE=token and its token (RAY_AUTH_TOKEN, or "
                          f"~/.ray/auth_token) in this shell") from None
    return ray


def alive_nodes(ray: Any) -> list[dict[str, Any]]:
    return [node for node in ray.nodes() if node.get("Alive")]


def check_log(url: str, nodes: int) -> None:
    """A log every actor can write: a server database once the cluster spans nodes."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # the log itself reports a malformed URL, with the forms it takes
    if parsed.get_backend_name() != "sqlite":
        return
    if not parsed.database or parsed.database == ":memory:":
        raise ConfigError("--ray with an in-memory SQLite log: each actor would write a log "
                          "of its own; pass --log sqlite:///FILE (one node) or a PostgreSQL "
                          "URL")
    if nodes > 1:
        raise ConfigError(
            f"the Ray cluster has {nodes} nodes, and actors on other nodes cannot write the "
            f"SQLite file {parsed.database}: pass a server database as --log, e.g. "
            f"postgresql+psycopg://USER@HOST:5432/DB (pip install 'agentkd[postgres]')")


def default_memory_mb(config: BenchConfig) -> int:
    """What one actor needs: `BASE_MEMORY_MB`, plus a local student's model if it plays."""
    from agentkd import local_models

    student = config.student or ""
    if config.mode in ("teacher", "collect") or \
            not student.startswith(f"{local_models.PROVIDER}/"):
        return BASE_MEMORY_MB
    size = os.path.getsize(local_models.model_path(student)) / 2**20
    return BASE_MEMORY_MB + int(size * LOCAL_MODEL_OVERHEAD)


def actor_options(config: BenchConfig) -> dict[str, Any]:
    """The resources each actor declares, so Ray places it where they are."""
    memory_mb = config.ray_memory_mb or default_memory_mb(config)
    options: dict[str, Any] = {"num_cpus": config.ray_cpus, "memory": memory_mb * 2**20}
    if config.ray_gpus:
        options["num_gpus"] = config.ray_gpus
    return options


def _slots(node: dict[str, Any], options: dict[str, Any]) -> int:
    """How many actors with `options` fit on `node` (by its total resources)."""
    have = node.get("Resources", {})
    fits = [int(have.get("CPU", 0) // options["num_cpus"]),
            int(have.get("memory", 0) // options["memory"])]
    if options.get("num_gpus"):
        fits.append(int(have.get("GPU", 0) // options["num_gpus"]))
    return max(0, min(fits))


def check_fits(options: dict[str, Any], nodes: Sequence[dict[str, Any]]) -> int:
    """The cluster's actor slots; a ConfigError when no node can hold even one actor."""
    slots = sum(_slots(node, options) for node in nodes)
    if slots < 1:
        largest = max(nodes, key=lambda n: n.get("Resources", {}).get("CPU", 0), default={})
        have = largest.get("Resources", {})
        raise ConfigError(
            f"no node of the Ray cluster can hold a game actor: each asks for "
            f"{options['num_cpus']} CPUs, {options['memory'] / 2**20:.0f} MB"
            + (f", {options['num_gpus']} GPUs" if options.get("num_gpus") else "")
            + f"; the largest node has {have.get('CPU', 0):g} CPUs, "
              f"{have.get('memory', 0) / 2**20:.0f} MB, {have.get('GPU', 0):g} GPUs. "
              f"Lower --ray-cpus / --ray-memory-mb / --ray-gpus or add a bigger node")
    return slots


def check_cluster(config: BenchConfig) -> int:
    """Everything that would fail a Ray run, checked before any game: returns the slots."""
    check_options(config)
    ray = connect(config.ray or "auto")
    nodes = alive_nodes(ray)
    check_log(config.log, len(nodes))
    return check_fits(actor_options(config), nodes)


def _absolute(config: BenchConfig) -> BenchConfig:
    """The config with the paths the driver resolved: an actor's working folder is Ray's."""
    log = config.log
    parsed = make_url(log)
    if parsed.get_backend_name() == "sqlite" and parsed.database and \
            not parsed.database.startswith("file:") and not os.path.isabs(parsed.database):
        log = parsed.set(database=os.path.abspath(parsed.database)).render_as_string(
            hide_password=False)
    demos = os.path.abspath(config.demos) if config.demos else None
    data = os.path.abspath(config.data) if config.data else None
    return replace(config, log=log, demos=demos, data=data, planned=None)


# ---- the demo store on nodes that do not share its folder ---------------------------------

def _manifest(folder: Path) -> dict[str, str]:
    if not folder.is_dir():
        return {}
    return {str(f.relative_to(folder)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(folder.rglob("*")) if f.is_file()}


def _ship_store(ray: Any, config: BenchConfig) -> StoreShipment | None:
    """The store the actors read, put in Ray's object store once; None when they read none
    (no store, or a collect run's, which only the driver writes)."""
    if config.demos is None or bench._demos_written_by_parent(config) is not None:
        return None
    folder = Path(config.demos)
    if not folder.is_dir():
        return None
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        tar.add(folder, arcname=".")
    # In a list: Ray would fetch a top-level reference for every actor, needed or not.
    return str(folder), _manifest(folder), [ray.put(packed.getvalue())]


def _store_here(config: BenchConfig, store: StoreShipment | None) -> BenchConfig:
    """`config` reading the store here: the driver's folder if this node sees the same files
    (one host, a shared file system), else a copy unpacked from the object store."""
    if store is None:
        return config
    folder, manifest, (ref,) = store
    if _manifest(Path(folder)) == manifest:
        return config
    import ray

    packed = cast(bytes, ray.get(ref))  # Ray's overloads read an untyped ref as a list
    copy = Path(tempfile.mkdtemp(prefix="agentkd-demos-"))
    with tarfile.open(fileobj=io.BytesIO(packed)) as tar:
        tar.extractall(copy, filter="data")
    return replace(config, demos=str(copy))


class GameActor:
    """One environment worker on the cluster: its own Distiller on the run's id and log."""

    def __init__(self, config: BenchConfig, run_id: str, store: StoreShipment | None) -> None:
        # A local student gets the CPUs the actor declared, not every core of the node.
        os.environ.setdefault("AGENTKD_LOCAL_N_THREADS", str(max(1, int(config.ray_cpus))))
        self.setup_error: AgentKDError | None = None
        try:
            self.config = _store_here(config, store)
            self.kd = bench._distiller(self.config, run_id)
        except AgentKDError as exc:
            # Raised at the first game, where the driver shows it: an actor whose creation
            # fails would look like a lost actor and have its games retried.
            self.setup_error = exc

    def play(self, game_file: str) -> EpisodeOutcome:
        import ray

        if self.setup_error is not None:
            raise self.setup_error
        outcome = bench.play_game(self.kd, self.config, game_file)
        return replace(outcome, node=ray.get_runtime_context().get_node_id())


def _logged_outcome(log: Any, run_id: str, task_id: str) -> EpisodeOutcome | None:
    """The outcome of `task_id` if an episode of it ended in the log (an actor lost after it
    wrote the end, before its answer came back), else None."""
    if task_id not in log.finished_task_ids(run_id):
        return None
    ended = [e for e in log.episodes(run_id) if e.task_id == task_id and e.finished_at
             and e.status not in ("running", "interrupted")]
    episode = ended[-1]
    return EpisodeOutcome(task_id, bool(episode.success), episode.n_steps,
                          int((episode.info or {}).get("invalid_actions", 0)), episode.cost_usd,
                          episode.teacher_steps)


def play_on_ray(config: BenchConfig, run_id: str, games: list[str]) -> Iterator[EpisodeOutcome]:
    """Play `games` on the cluster, yielding outcomes as they come; each game ends once."""
    from agentkd.envs.alfworld import AlfWorldEnv
    from agentkd.log import TrajectoryLog

    if not games:
        return
    ray = connect(config.ray or "auto")
    from ray.exceptions import RayActorError, RayTaskError

    config = _absolute(config)
    options = actor_options(config)
    slots = check_fits(options, alive_nodes(ray))
    count = min(len(games), config.workers or slots)
    store = _ship_store(ray, config)
    remote = ray.remote(GameActor)
    log = TrajectoryLog(config.log)
    todo = deque(os.path.abspath(g) for g in games)
    attempts: dict[str, int] = {}
    running: dict[Any, tuple[Any, str]] = {}
    started = 0

    def start_actor() -> Any:
        nonlocal started
        started += 1
        # Named, so `ray list actors` shows whose they are (and a test can find one to kill).
        return remote.options(name=f"agentkd:{run_id}:{started}", max_restarts=0,
                              max_task_retries=0, **options).remote(config, run_id, store)

    def hand_out(actor: Any) -> None:
        if todo:
            game = todo.popleft()
            running[actor.play.remote(game)] = (actor, game)
        else:
            ray.kill(actor)  # nothing left for it: give its resources back now

    try:
        for _ in range(count):
            hand_out(start_actor())
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, game = running.pop(ref)
            try:
                outcome: EpisodeOutcome | None = ray.get(ref)
            except RayTaskError as exc:  # the game raised: the run stops, as in one process
                raise exc.cause from None
            except RayActorError:
                ray.kill(actor)
                task_id = AlfWorldEnv(game).task_id
                outcome = _logged_outcome(log, run_id, task_id)
                if outcome is None:
                    log.mark_interrupted(run_id, task_id)
                    attempts[game] = attempts.get(game, 0) + 1
                    if attempts[game] >= MAX_ATTEMPTS:
                        raise AgentKDError(
                            f"game {task_id} lost its Ray actor {attempts[game]} times "
                            f"(killed, out of memory, or its node lost); see Ray's logs "
                            f"(/tmp/ray/session_latest/logs on its node). Every step it "
                            f"served is in the log; continue with --resume --run {run_id}"
                        ) from None
                    todo.appendleft(game)
                actor = start_actor()
            hand_out(actor)
            if outcome is not None:
                yield outcome
    finally:
        # Stopped early (an error, Ctrl-C): the games in flight end now, as interrupted.
        for actor, game in running.values():
            ray.kill(actor)
            log.mark_interrupted(run_id, AlfWorldEnv(game).task_id)
        log.close()
