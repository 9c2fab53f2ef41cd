"""Ray: the overhead of `--ray` over `--workers` on one host, a two-node collect, and what
1,000 episodes would take on N nodes.

1. The same ALFWorld valid_seen games with `--workers 2` (a process pool) and with `--ray` on a
   local Ray head of 2 CPUs (2 actors): wall time ratio, and the wins and cost of each game,
   which must be identical (the offline teacher is deterministic).
2. A two-node cluster simulated on this host (a head and a second `ray start --address` node,
   1 CPU each) runs a collect over train games into PostgreSQL: games per node, wall time.
   The same run with a SQLite log is refused before any game (recorded).
3. From the measured per-game times: 1,000 episodes on N nodes.

    python benchmarks/ray_scale.py --log postgresql+psycopg://postgres:postgres@127.0.0.1:5432/agentkd_test

Teacher mode with the offline `alfworld/expert` teacher: no LLM, so the figures are the
runner's, not a model's. Writes benchmarks/results/ray.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# benchmarks/alfworld.py shares its name with the alfworld package: keep this folder off the
# import path, or `import alfworld` inside agentkd.envs would import the benchmark script.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from rich.console import Console
from rich.table import Table

from agentkd.envs.bench import BenchConfig, EpisodeOutcome, run_bench
from agentkd.errors import AgentKDError
from agentkd.log import TrajectoryLog

RAY = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
console = Console()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def cluster(cpus_per_node: list[int]) -> Iterator[tuple[str, float]]:
    """A Ray cluster on loopback: a head, then one `ray start --address` node per further
    entry, each with its own CPUs; yields (head address, seconds to start it)."""
    import ray

    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    start = time.perf_counter()
    try:
        for i, cpus in enumerate(cpus_per_node):
            where = ["--head", "--port", address.rpartition(":")[2],
                     "--include-dashboard=false"] if i == 0 else ["--address", address]
            subprocess.run([RAY, "start", *where, "--node-ip-address", "127.0.0.1",
                            "--num-cpus", str(cpus), "--disable-usage-stats"],
                           check=True, capture_output=True, env=env)
        yield address, time.perf_counter() - start
    finally:
        ray.shutdown()
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env)


class ActorMemory:
    """Peak resident memory of the game actors (processes titled ray::GameActor), sampled."""

    def __init__(self) -> None:
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.5):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    if b"ray::GameActor" not in (proc / "cmdline").read_bytes():
                        continue
                    status = (proc / "status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_mb = max(self.peak_mb, int(line.split()[1]) / 1024)

    def __enter__(self) -> ActorMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def timed(config: BenchConfig) -> tuple[float, list[EpisodeOutcome]]:
    start = time.perf_counter()
    _, outcomes = run_bench(config)
    return time.perf_counter() - start, outcomes


def timed_games(config: BenchConfig) -> tuple[float, float, list[EpisodeOutcome]]:
    """(seconds until the last game ended, seconds the driver then took to fill the demo
    store from the log, outcomes)."""
    start = time.perf_counter()
    last = [start]
    _, outcomes = run_bench(config, on_episode=lambda _: last.append(time.perf_counter()))
    return last[-1] - start, time.perf_counter() - last[-1], outcomes


def per_game(log: TrajectoryLog, run_id: str) -> dict[str, dict[str, Any]]:
    return {e.task_id: {"status": e.status, "steps": e.n_steps, "cost_usd": e.cost_usd,
                        "seconds": (e.finished_at - e.started_at).total_seconds()}
            for e in log.episodes(run_id) if e.finished_at and e.status != "interrupted"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", default=os.environ.get("AGENTKD_TEST_POSTGRES_URL"),
                        help="PostgreSQL URL of the log (default: $AGENTKD_TEST_POSTGRES_URL)")
    parser.add_argument("--workdir", type=Path, default=Path(".agentkd/bench-ray"))
    parser.add_argument("--games", type=int, default=12, help="valid_seen games, phase 1")
    parser.add_argument("--train-games", type=int, default=24, help="train games, phase 2")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--phases", default="1,2", help="1: one host; 2: two nodes and the "
                        "projection (a phase not run keeps its figures in ray.json)")
    args = parser.parse_args()
    phases = set(args.phases.split(","))
    if not args.log or not args.log.startswith("postgresql"):
        parser.error("--log must be a PostgreSQL URL (the two-node run needs a server log)")
    args.workdir.mkdir(parents=True, exist_ok=True)
    # Token authentication (Ray's default) with a token of this run's own, shared by the
    # clusters started here and this driver through the environment; set before Ray is
    # imported, which reads it once.
    os.environ.update({"RAY_AUTH_MODE": "token",
                       "RAY_AUTH_TOKEN": uuid.uuid4().hex + uuid.uuid4().hex})
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = TrajectoryLog(args.log)
    games = {"mode": "teacher", "teacher": "alfworld/expert", "split": "valid_seen",
             "episodes": args.games, "stratify": True, "max_steps": args.max_steps,
             "log": args.log}
    out = Path(__file__).parent / "results" / "ray.json"
    result: dict[str, Any] = json.loads(out.read_text()) if out.exists() else {}
    result.setdefault("args", {})[args.phases] = {k: str(v) for k, v in vars(args).items()
                                                  if k != "log"}
    result.setdefault("load_average", {})[args.phases] = os.getloadavg()[0]

    if "1" in phases:
        result["one_host"] = one_host(args, games, log, stamp)
    if "2" in phases:
        result.update(two_nodes(args, games, log, stamp))
    out.write_text(json.dumps(result, indent=2))
    print_table(result)
    console.print(f"wrote {out}")


def one_host(args: argparse.Namespace, games: dict[str, Any], log: TrajectoryLog,
             stamp: str) -> dict[str, Any]:
    """A process pool of 2 against 2 actors on a 2-CPU local head, on the same games."""
    console.print(f"[bold]1.[/bold] {args.games} valid_seen games: --workers 2")
    pool_s, _ = timed(BenchConfig(**games, workers=2, run=f"ray-pool-{stamp}"))
    with cluster([2]) as (address, start_s):
        console.print(f"[bold]1.[/bold] the same games: --ray on a local head ({start_s:.1f} s "
                      f"to start)")
        with ActorMemory() as memory:
            ray_s, _ = timed(BenchConfig(**games, ray=address, workers=0,
                                                    run=f"ray-local-{stamp}"))
    pool_games = per_game(log, f"ray-pool-{stamp}")
    ray_games = per_game(log, f"ray-local-{stamp}")
    same = all(pool_games[t]["status"] == ray_games[t]["status"]
               and pool_games[t]["cost_usd"] == ray_games[t]["cost_usd"] for t in pool_games) \
        and pool_games.keys() == ray_games.keys()
    return {
        "games": args.games, "workers_2_seconds": pool_s, "ray_seconds": ray_s,
        "ray_over_workers": ray_s / pool_s, "ray_cluster_start_seconds": start_s,
        "identical_success_and_cost": same,
        "won": {"workers_2": sum(g["status"] == "success" for g in pool_games.values()),
                "ray": sum(g["status"] == "success" for g in ray_games.values())},
        "cost_usd": {"workers_2": sum(g["cost_usd"] for g in pool_games.values()),
                     "ray": sum(g["cost_usd"] for g in ray_games.values())},
        "actor_peak_rss_mb": memory.peak_mb}


def two_nodes(args: argparse.Namespace, games: dict[str, Any], log: TrajectoryLog,
              stamp: str) -> dict[str, Any]:
    """Two nodes on this host, 1 CPU each (an actor each): a collect into PostgreSQL; then
    1,000 episodes projected from it."""
    collect = {**games, "mode": "collect", "split": "train", "episodes": args.train_games,
               "max_steps": 50, "demos": str(args.workdir / f"demos-{stamp}")}
    with cluster([1, 1]) as (address, start_s):
        import ray

        try:
            run_bench(BenchConfig(**{**collect, "log": f"sqlite:///{args.workdir / 'x.db'}"},
                                  ray=address, run=f"ray-sqlite-{stamp}"))
            refusal = None
        except AgentKDError as exc:
            refusal = str(exc)
        console.print(f"[bold]2.[/bold] {args.train_games} train games, collect on 2 nodes")
        run_id = f"ray-two-nodes-{stamp}"
        games_s, store_s, outcomes = timed_games(BenchConfig(**collect, ray=address,
                                                             workers=0, run=run_id))
        heads = {n["NodeID"]: "head" if "node:__internal_head__" in n["Resources"] else "worker"
                 for n in ray.nodes()}
    collected = per_game(log, run_id)
    by_node = Counter(heads.get(o.node or "", "?") for o in outcomes)
    won = sum(o.success for o in outcomes)
    actors = len(by_node)
    # Throughput, not episode durations: an actor's game also opens its ALFWorld game before
    # the episode starts, and the first game of each actor pays for starting it.
    actor_game_s = games_s * actors / args.train_games
    store_per_won_s = store_s / won if won else 0.0
    two = {
        "games": args.train_games, "games_seconds": games_s,
        "store_seconds": store_s, "cluster_start_seconds": start_s,
        "games_per_node": dict(by_node), "won": won,
        "finished_once": len(collected) == args.train_games
        and all(g["status"] in ("success", "failure") for g in collected.values()),
        "mean_episode_seconds": statistics.mean(g["seconds"] for g in collected.values()),
        "actor_seconds_per_game": actor_game_s, "sqlite_refused": refusal}
    # 1,000 episodes: each actor plays ceil(1000 / actors) games in a row; the driver then
    # embeds the won ones into the store (serial, at the measured rate and win rate).
    hours = {str(n): (math.ceil(1000 / (8 * n)) * actor_game_s
                      + 1000 * won / args.train_games * store_per_won_s) / 3600
             for n in (1, 2, 4, 8, 16)}
    projection = {"actor_seconds_per_game": actor_game_s,
                  "driver_store_seconds_per_won_episode": store_per_won_s,
                  "assumes": "1 actor per CPU on 8-CPU nodes, games as fast as measured "
                             "here, a PostgreSQL log that keeps up",
                  "hours": hours}
    return {"two_nodes": two, "projection_1000": projection}


def print_table(result: dict[str, Any]) -> None:
    one, two, proj = result["one_host"], result["two_nodes"], result["projection_1000"]
    table = Table(title="Ray: overhead, two nodes, projection (teacher alfworld/expert)")
    for column in ("what", "measured"):
        table.add_column(column)
    table.add_row(f"{one['games']} games, --workers 2", f"{one['workers_2_seconds']:.1f} s, "
                  f"won {one['won']['workers_2']}, ${one['cost_usd']['workers_2']:.4f}")
    table.add_row(f"{one['games']} games, --ray (2 actors)", f"{one['ray_seconds']:.1f} s, "
                  f"won {one['won']['ray']}, ${one['cost_usd']['ray']:.4f}")
    table.add_row("ray / workers wall time", f"{one['ray_over_workers']:.2f}× (target ≤ 1.1×)")
    table.add_row("identical success and cost per game", str(one["identical_success_and_cost"]))
    table.add_row("actor peak RSS", f"{one['actor_peak_rss_mb']:.0f} MB")
    table.add_row(f"collect {two['games']} train games, 2 nodes",
                  f"games {two['games_seconds']:.1f} s + store {two['store_seconds']:.1f} s; "
                  f"per node {two['games_per_node']}; won {two['won']}; "
                  f"{two['actor_seconds_per_game']:.1f} s/game per actor")
    table.add_row("each game finished once", str(two["finished_once"]))
    table.add_row("SQLite log on 2 nodes", "refused" if two["sqlite_refused"] else "NOT refused")
    for n, hours in proj["hours"].items():
        table.add_row(f"1,000 episodes on {n} × 8-CPU nodes", f"{hours * 60:.1f} min")
    console.print(table)


if __name__ == "__main__":
    main()
