"""The cached rollout table that makes router training tractable on a small CPU.

Two layers, both in one SQLite file under the run's out dir (resumable: an interrupted build
picks up where it stopped, and failed LLM calls are retried on the next run):

1. a content-addressed memo of module results (key = module, tier, strategy, model, prompt
   settings, query and the exact input text), shared by training and evaluation, so a
   module never runs twice on the same input;
2. per training query, the outcomes (answer, task score, cost) of 11 real pipeline runs: the
   reference path (every module at `REFERENCE_TIER`) and each module moved alone to each other
   tier ("one module at a time" around the reference).

The approximation: the pipeline is sequential and a full table would need 3^5 = 243 runs per
query, most of them LLM-bound. We factor instead: for a tier choice c,

    score(c) ≈ clip(score_ref + Σ_m [score(m = c_m) − score_ref], 0, 1)
    cost(c)  ≈ max(0, cost_ref + Σ_m [cost(m = c_m) − cost_ref])

i.e. first-order effects of each module's tier around the reference path, no interactions.
Cost is close to additive anyway (each module bills its own calls); score interactions are
what we give up. Router *states* need no approximation: a module's state is the query and the
memory it reads, which depends only on the Filter's tier, and all three Filter outputs are in
the table. Evaluation always runs the real pipeline, never this model.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agentkd.errors import InputError
from agentkd.memory.config import MODULES, TIERS
from agentkd.memory.data import QAItem, Sample
from agentkd.memory.modules import ModuleResult
from agentkd.memory.pipeline import FixedTiers, MemoryIndex, Pipeline, PipelineResult

REFERENCE_TIER = "mid"
Scorer = Callable[[QAItem, str], float]


def variants() -> list[tuple[str, dict[str, str]]]:
    """The 11 tier assignments run per training query: 'ref' and '<module>=<tier>'."""
    ref = dict.fromkeys(MODULES, REFERENCE_TIER)
    out = [("ref", ref)]
    for m in MODULES:
        for t in TIERS:
            if t != REFERENCE_TIER:
                out.append((f"{m}={t}", {**ref, m: t}))
    return out


class RolloutCache:
    """SQLite store of the module memo, per-query outcomes and router states."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS memo (key TEXT PRIMARY KEY, result TEXT NOT NULL);
            CREATE TABLE IF NOT EXISTS outcomes (
                config TEXT, qid TEXT, variant TEXT, payload TEXT NOT NULL,
                PRIMARY KEY (config, qid, variant));
            CREATE TABLE IF NOT EXISTS states (
                config TEXT, qid TEXT, name TEXT, vec BLOB NOT NULL,
                PRIMARY KEY (config, qid, name));
        """)
        self.db.commit()
        self.hits = 0

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> RolloutCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Memo protocol -------------------------------------------------------------------
    def get(self, key: str) -> ModuleResult | None:
        with self._lock:
            row = self.db.execute("SELECT result FROM memo WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        self.hits += 1
        return ModuleResult.from_json(row[0])

    def put(self, key: str, result: ModuleResult) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO memo VALUES (?, ?)", (key, result.to_json()))
            self.db.commit()

    # Outcomes and states ---------------------------------------------------------------
    def outcome(self, config: str, qid: str, variant: str) -> dict[str, object] | None:
        with self._lock:
            row = self.db.execute(
                "SELECT payload FROM outcomes WHERE config=? AND qid=? AND variant=?",
                (config, qid, variant)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def put_outcome(self, config: str, qid: str, variant: str, payload: dict[str, object]) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO outcomes VALUES (?, ?, ?, ?)",
                            (config, qid, variant, json.dumps(payload)))
            self.db.commit()

    def state(self, config: str, qid: str, name: str) -> np.ndarray | None:
        with self._lock:
            row = self.db.execute("SELECT vec FROM states WHERE config=? AND qid=? AND name=?",
                                  (config, qid, name)).fetchone()
        return None if row is None else np.frombuffer(row[0], dtype=np.float32).copy()

    def put_state(self, config: str, qid: str, name: str, vec: np.ndarray) -> None:
        with self._lock:
            self.db.execute("INSERT OR REPLACE INTO states VALUES (?, ?, ?, ?)",
                            (config, qid, name, np.asarray(vec, dtype=np.float32).tobytes()))
            self.db.commit()


def config_key(pipeline: Pipeline, scorer_name: str) -> str:
    blob = pipeline.config.model_dump_json() + "|" + scorer_name
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class QueryOutcomes:
    """One training query's factored table (see the module docstring)."""

    qid: str
    query_vec: np.ndarray            # (D,)
    memory_vecs: np.ndarray          # (4, D): retrieved memory, then Filter output per tier
    ref_score: float
    ref_cost: float
    score: np.ndarray                # (5 modules, 3 tiers): score with that module moved alone
    cost: np.ndarray                 # (5, 3)

    def combo_score(self, tiers: np.ndarray) -> np.ndarray:
        """Approximate score for tier indices (..., 5)."""
        deltas = self.score[np.arange(len(MODULES)), tiers] - self.ref_score
        return np.clip(self.ref_score + deltas.sum(-1), 0.0, 1.0)

    def combo_cost(self, tiers: np.ndarray) -> np.ndarray:
        deltas = self.cost[np.arange(len(MODULES)), tiers] - self.ref_cost
        return np.maximum(self.ref_cost + deltas.sum(-1), 0.0)


def outcome_payload(result: PipelineResult, score: float) -> dict[str, object]:
    return {"answer": result.answer, "score": score, "cost": result.cost_usd,
            "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "latency_ms": result.latency_ms, "tiers": result.tiers,
            "errors": [m.error for m in result.modules if m.error]}


STATE_VARIANTS = ("ref", "filter=low", "filter=high")  # the runs that record a Filter state


def missing(cache: RolloutCache, cfg: str, qid: str, name: str, tiers: dict[str, str]) -> bool:
    """Whether variant `name` of query `qid` still has to run (no outcome, or no state)."""
    if cache.outcome(cfg, qid, name) is None:
        return True
    return name in STATE_VARIANTS and cache.state(cfg, qid, f"filter:{tiers['filter']}") is None


def pending_runs(pipeline: Pipeline, cache: RolloutCache, items: list[tuple[Sample, QAItem]],
                 scorer_name: str = "f1") -> int:
    """How many pipeline runs `build_table` still has to make for `items`."""
    cfg = config_key(pipeline, scorer_name)
    return sum(missing(cache, cfg, qa.qid, name, tiers)
               for _, qa in items for name, tiers in variants())


def build_table(pipeline: Pipeline, cache: RolloutCache,
                items: list[tuple[Sample, QAItem]], scorer: Scorer, scorer_name: str = "f1",
                progress: Callable[[str], None] | None = None) -> list[QueryOutcomes]:
    """Run (or read back) the 11 variants per query and return the factored table.

    `progress` is called once per variant actually run, with a short label (for a progress
    bar started at `pending_runs`' complement); pressing Ctrl-C loses at most the variant in
    flight.
    """
    if pipeline.ctx.memo is not cache:
        pipeline.ctx.memo = cache
    cfg = config_key(pipeline, scorer_name)
    indexes: dict[str, MemoryIndex] = {}
    table = []
    ref_idx = TIERS.index(REFERENCE_TIER)
    for sample, qa in items:
        score = np.zeros((len(MODULES), len(TIERS)), dtype=np.float64)
        cost = np.zeros_like(score)
        filter_vecs: dict[str, np.ndarray] = {}
        for name, tiers in variants():
            payload = cache.outcome(cfg, qa.qid, name)
            needs_state = name in STATE_VARIANTS
            state_name = f"filter:{tiers['filter']}"
            if missing(cache, cfg, qa.qid, name, tiers):
                if sample.sample_id not in indexes:
                    indexes[sample.sample_id] = pipeline.index(sample.turns)
                result = pipeline.run(qa.question, indexes[sample.sample_id], FixedTiers(tiers))
                payload = outcome_payload(result, scorer(qa, result.answer))
                if not payload["errors"]:  # keep failed runs out so a resume retries them
                    cache.put_outcome(cfg, qa.qid, name, payload)
                cache.put_state(cfg, qa.qid, "query", result.states["filter"][0])
                cache.put_state(cfg, qa.qid, "retrieved", result.states["filter"][1])
                cache.put_state(cfg, qa.qid, state_name, result.states["entity"][1])
                if progress:
                    progress(f"{qa.qid} {name}")
            assert payload is not None
            if needs_state:
                vec = cache.state(cfg, qa.qid, state_name)
                assert vec is not None
                filter_vecs[tiers["filter"]] = vec
            s, c = float(payload["score"]), float(payload["cost"])  # type: ignore[arg-type]
            if name == "ref":
                score[:, ref_idx], cost[:, ref_idx] = s, c
            else:
                module, tier = name.split("=")
                score[MODULES.index(module), TIERS.index(tier)] = s
                cost[MODULES.index(module), TIERS.index(tier)] = c
        qv, rv = cache.state(cfg, qa.qid, "query"), cache.state(cfg, qa.qid, "retrieved")
        assert qv is not None and rv is not None
        table.append(QueryOutcomes(
            qid=qa.qid, query_vec=qv,
            memory_vecs=np.stack([rv, *(filter_vecs[t] for t in TIERS)]),
            ref_score=float(score[0, ref_idx]), ref_cost=float(cost[0, ref_idx]),
            score=score, cost=cost))
    return table


class Reward:
    """reward = α · task score + λ · cost efficiency.

    Cost efficiency = 1 − percentile of sqrt(cost) within a reference population (every tier
    combination of every training query), so it lies in [0, 1] whatever the price scale. α is
    std(efficiency) / std(score) over the same population: without it the task score's small
    spread (F1 moves a few points between tiers) is swamped by the efficiency term and the
    router collapses to all-Low for any λ.
    """

    def __init__(self, table: list[QueryOutcomes], lam: float, *, max_population: int = 200_000,
                 seed: int = 0) -> None:
        if not table:
            raise InputError("the rollout table is empty: no training queries")
        if lam < 0:
            raise InputError(f"lambda must be >= 0, got {lam}")
        self.lam = lam
        combos = np.array(list(itertools.product(range(len(TIERS)), repeat=len(MODULES))))
        per_query = max(1, max_population // len(table))
        rng = np.random.default_rng(seed)
        scores, costs = [], []
        for q in table:
            chosen = combos if per_query >= len(combos) else combos[
                rng.choice(len(combos), per_query, replace=False)]
            scores.append(q.combo_score(chosen))
            costs.append(q.combo_cost(chosen))
        pop_scores = np.concatenate(scores)
        self.sqrt_costs = np.sort(np.sqrt(np.concatenate(costs)))
        eff = self.efficiency(np.concatenate(costs))
        s_std, e_std = float(pop_scores.std()), float(eff.std())
        self.alpha = e_std / s_std if s_std > 1e-9 and e_std > 1e-9 else 1.0

    def efficiency(self, cost: np.ndarray | float) -> np.ndarray:
        """1 − (share of the population at or below sqrt(cost)), mid-rank for ties."""
        x = np.sqrt(np.asarray(cost, dtype=np.float64))
        lo = np.searchsorted(self.sqrt_costs, x, side="left")
        hi = np.searchsorted(self.sqrt_costs, x, side="right")
        return 1.0 - (lo + hi) / (2.0 * len(self.sqrt_costs))

    def __call__(self, score: np.ndarray | float, cost: np.ndarray | float) -> np.ndarray:
        return self.alpha * np.asarray(score, dtype=np.float64) + self.lam * self.efficiency(cost)


def iter_combos() -> Iterable[tuple[int, ...]]:
    return itertools.product(range(len(TIERS)), repeat=len(MODULES))
