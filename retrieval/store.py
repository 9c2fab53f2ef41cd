"""The demo store: successful teacher steps, searchable by (goal, plan, observation).

On disk a store is a folder:

- ``meta.json``     embedding model, vector size, index settings;
- ``demos.sqlite``  one row per demo episode and per step (observation, reasoning, action);
- ``vectors.f32``   append-only step vectors, the source of truth for the index;
- ``index.faiss``   the faiss index, rewritten on `flush`/`close`.

Each step's vector is [goal ‖ plan ‖ observation] of L2-normalised embeddings; a query is the
same layout scaled by the key weights, so one inner-product search scores
``w_goal·cos(goal) + w_plan·cos(plan) + w_obs·cos(obs)`` and weights can change per query.
The index is exact (flat) below `approx_threshold` steps and HNSW above it. Adding demos only
appends; an index missing its newest vectors (a crash before flush) is topped up on open.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from agentkd.retrieval.embedder import DEFAULT_MODEL, Embedder, get_embedder
from agentkd.retrieval.keys import StepKey

from agentkd.config import KeyWeights, Retrieval
from agentkd.errors import StoreError

FORMAT_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS episodes (
    id INTEGER PRIMARY KEY, source TEXT, task_id TEXT, task_type TEXT,
    goal TEXT NOT NULL, plan TEXT NOT NULL DEFAULT '', success INTEGER NOT NULL DEFAULT 1,
    cost_usd REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS steps (
    id INTEGER PRIMARY KEY, episode_id INTEGER NOT NULL REFERENCES episodes(id),
    idx INTEGER NOT NULL, observation TEXT NOT NULL, reasoning TEXT NOT NULL DEFAULT '',
    action TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ix_steps_episode ON steps(episode_id, idx);
"""


@dataclass(frozen=True)
class DemoStep:
    observation: str
    action: str
    reasoning: str = ""


@dataclass
class DemoEpisode:
    """A teacher episode to add: goal, optional plan and its steps in order."""

    goal: str
    steps: list[DemoStep]
    plan: str = ""
    task_id: str | None = None
    task_type: str | None = None
    source: str | None = None
    success: bool = True
    cost_usd: float = 0.0


@dataclass
class DemoWindow:
    """A retrieved hit: the matching step with its neighbours from one demo episode."""

    episode_id: int
    hit_step: int
    hit_row: int
    score: float
    goal: str
    plan: str
    task_type: str | None
    steps: list[DemoStep] = field(default_factory=list)
    first_step: int = 0


class DemoStore:
    """A persistent, incrementally growing store of teacher steps.

    >>> store = DemoStore.open("demos/", create=True)        # doctest: +SKIP
    >>> store.add(DemoEpisode(goal="put a mug in the coffee machine", steps=[...]))
    >>> store.search(StepKey(goal=..., observation=...), k=6)
    """

    def __init__(self, path: Path, embedder: Embedder, meta: dict[str, Any]) -> None:
        self.path = path
        self.embedder = embedder
        self.meta = meta
        self.dim = int(meta["dim"])
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path / "demos.sqlite", check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._index = self._load_index()
        self._dirty = False
        self._text_cache: dict[str, np.ndarray] = {}

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, embedding_model: str | None = None,
             create: bool = False, approx_threshold: int = 50_000) -> DemoStore:
        """Open the store at `path`; with `create=True` make it when it does not exist.

        Opening with an `embedding_model` other than the one the store was built with is an
        error: vectors from two models are not comparable.
        """
        folder = Path(path)
        meta_file = folder / "meta.json"
        if not meta_file.exists():
            if not create:
                raise StoreError(
                    f"no demo store at {folder}: build one with `agentkd demos build` or run "
                    f"in collect mode with demos={str(folder)!r}"
                )
            folder.mkdir(parents=True, exist_ok=True)
            model = embedding_model or DEFAULT_MODEL
            embedder = get_embedder(model)
            meta = {"format": FORMAT_VERSION, "embedding_model": model, "dim": embedder.dim,
                    "approx_threshold": approx_threshold, "index": "flat"}
            meta_file.write_text(json.dumps(meta, indent=2))
            return cls(folder, embedder, meta)
        try:
            meta = json.loads(meta_file.read_text())
            stored_model = meta["embedding_model"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise StoreError(f"demo store metadata {meta_file} is unreadable ({exc})") from None
        if embedding_model and embedding_model != stored_model:
            raise StoreError(
                f"demo store {folder} was built with embedding model {stored_model!r}, not "
                f"{embedding_model!r}; open it with that model or build a new store"
            )
        return cls(folder, get_embedder(stored_model), meta)

    @property
    def _vector_width(self) -> int:
        return 3 * self.dim

    def _stored_vectors(self) -> np.ndarray:
        file = self.path / "vectors.f32"
        if not file.exists():
            return np.zeros((0, self._vector_width), dtype=np.float32)
        raw = np.fromfile(file, dtype=np.float32)
        if raw.size % self._vector_width:
            raise StoreError(f"{file} is truncated or corrupted (size not a whole number of "
                             f"vectors); rebuild the store with `agentkd demos build`")
        return raw.reshape(-1, self._vector_width)

    def _new_index(self, kind: str) -> faiss.Index:
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self._vector_width, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = 128
            return index
        return faiss.IndexFlatIP(self._vector_width)

    def _load_index(self) -> faiss.Index:
        rows = self._db.execute("SELECT COUNT(*) FROM steps").fetchone()[0]
        index_file = self.path / "index.faiss"
        index = None
        if index_file.exists():
            try:
                index = faiss.read_index(str(index_file))
            except RuntimeError:
                warnings.warn(f"{index_file} is corrupted; rebuilding it from vectors.f32",
                              stacklevel=3)
        if index is None or index.d != self._vector_width or index.ntotal > rows:
            index = self._new_index(self.meta.get("index", "flat"))
        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = 128
        if index.ntotal < rows:  # vectors appended after the last flush
            vectors = self._stored_vectors()
            if len(vectors) < rows:
                raise StoreError(f"demo store {self.path} has {rows} steps but only "
                                 f"{len(vectors)} vectors; rebuild it with `agentkd demos build`")
            index.add(vectors[index.ntotal:rows])
        return index

    # ---- adding --------------------------------------------------------------------------

    def _embed_cached(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            for text, vec in zip(missing, self.embedder.encode(missing), strict=True):
                if len(self._text_cache) > 4096:
                    self._text_cache.clear()
                self._text_cache[text] = vec
        return np.stack([self._text_cache[t] for t in texts])

    def _vectors(self, goal: str, plan: str, observations: list[str]) -> np.ndarray:
        goal_vec = self._embed_cached([goal])[0]
        plan_vec = self._embed_cached([plan])[0] if plan else np.zeros(self.dim, np.float32)
        obs = self.embedder.encode(observations)
        head = np.tile(np.concatenate([goal_vec, plan_vec]), (len(observations), 1))
        return np.ascontiguousarray(np.hstack([head, obs]), dtype=np.float32)

    def add(self, episode: DemoEpisode) -> int:
        """Add one episode's steps; returns its id. Empty episodes are rejected."""
        if not episode.steps:
            raise StoreError("a demo episode needs at least one step")
        if not episode.goal:
            raise StoreError("a demo episode needs a goal (the task description)")
        vectors = self._vectors(episode.goal, episode.plan,
                                [s.observation for s in episode.steps])
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO episodes(source, task_id, task_type, goal, plan, success, cost_usd)"
                " VALUES (?,?,?,?,?,?,?)",
                (episode.source, episode.task_id, episode.task_type, episode.goal, episode.plan,
                 int(episode.success), episode.cost_usd),
            )
            episode_id = int(cur.lastrowid or 0)
            first_row = self._index.ntotal
            self._db.executemany(
                "INSERT INTO steps(id, episode_id, idx, observation, reasoning, action)"
                " VALUES (?,?,?,?,?,?)",
                [(first_row + i, episode_id, i, s.observation, s.reasoning, s.action)
                 for i, s in enumerate(episode.steps)],
            )
            with open(self.path / "vectors.f32", "ab") as f:
                vectors.tofile(f)
                f.flush()
                os.fsync(f.fileno())
            self._db.commit()
            self._index.add(vectors)
            self._dirty = True
            self._maybe_go_approximate()
        return episode_id

    def _maybe_go_approximate(self) -> None:
        if self.meta.get("index") == "flat" and self._index.ntotal >= self.meta["approx_threshold"]:
            index = self._new_index("hnsw")
            index.add(self._stored_vectors()[: self._index.ntotal])
            self._index = index
            self.meta["index"] = "hnsw"
            (self.path / "meta.json").write_text(json.dumps(self.meta, indent=2))

    def flush(self) -> None:
        """Write the index file (vectors and rows are already durable)."""
        with self._lock:
            if self._dirty:
                tmp = self.path / "index.faiss.tmp"
                faiss.write_index(self._index, str(tmp))
                os.replace(tmp, self.path / "index.faiss")
                self._dirty = False

    def close(self) -> None:
        self.flush()
        self._db.close()

    def __enter__(self) -> DemoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- searching -----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def query_vector(self, key: StepKey, weights: KeyWeights) -> np.ndarray:
        parts = [key.goal, key.plan, key.observation]
        texts = [t for t in parts if t]
        vecs = dict(zip(texts, self._embed_cached(texts), strict=True)) if texts else {}
        zero = np.zeros(self.dim, np.float32)
        return np.concatenate([
            weights.goal * vecs.get(key.goal, zero) if key.goal else zero,
            weights.plan * vecs.get(key.plan, zero) if key.plan else zero,
            weights.observation * vecs.get(key.observation, zero) if key.observation else zero,
        ]).astype(np.float32)[None, :]

    def search_rows(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw index search: (scores, row ids) of the `n` best steps."""
        with self._lock:
            scores, rows = self._index.search(query, min(n, len(self)))
        return scores[0], rows[0]

    def search(self, key: StepKey, config: Retrieval | None = None) -> list[DemoWindow]:
        """The best step windows for `key`, best first, at most `config.k` of them."""
        config = config or Retrieval()
        if len(self) == 0:
            return []
        scores, rows = self.search_rows(self.query_vector(key, config.weights),
                                        config.k * 8 * config.max_hits_per_episode + 16)
        located = self._locate([int(r) for r in rows if r >= 0])
        hits_per_episode: dict[int, list[tuple[int, int]]] = {}
        chosen: list[tuple[float, int, int, int, int]] = []
        for score, row in zip(scores, rows, strict=False):
            if row < 0 or int(row) not in located:
                continue
            episode_id, idx = located[int(row)]
            lo, hi = idx - config.window_before, idx + config.window_after
            spans = hits_per_episode.setdefault(episode_id, [])
            if len(spans) >= config.max_hits_per_episode:
                continue
            if any(lo <= s_hi and s_lo <= hi for s_lo, s_hi in spans):
                continue  # overlapping windows of one episode would repeat steps
            spans.append((lo, hi))
            chosen.append((float(score), int(row), episode_id, idx, lo))
            if len(chosen) == config.k:
                break
        return [self._window(score, row, episode_id, idx, config)
                for score, row, episode_id, idx, _ in chosen]

    def _locate(self, rows: Sequence[int]) -> dict[int, tuple[int, int]]:
        if not rows:
            return {}
        marks = ",".join("?" * len(rows))
        with self._lock:
            found = self._db.execute(
                f"SELECT id, episode_id, idx FROM steps WHERE id IN ({marks})", list(rows)
            ).fetchall()
        return {r[0]: (r[1], r[2]) for r in found}

    def _window(self, score: float, row: int, episode_id: int, idx: int,
                config: Retrieval) -> DemoWindow:
        with self._lock:
            goal, plan, task_type = self._db.execute(
                "SELECT goal, plan, task_type FROM episodes WHERE id=?", (episode_id,)
            ).fetchone()
            steps = self._db.execute(
                "SELECT idx, observation, reasoning, action FROM steps WHERE episode_id=? "
                "AND idx BETWEEN ? AND ? ORDER BY idx",
                (episode_id, idx - config.window_before, idx + config.window_after),
            ).fetchall()
        return DemoWindow(
            episode_id=episode_id, hit_step=idx, hit_row=row, score=score, goal=goal, plan=plan,
            task_type=task_type, first_step=steps[0][0],
            steps=[DemoStep(observation=o, reasoning=r, action=a) for _, o, r, a in steps],
        )

    # ---- summaries -----------------------------------------------------------------------

    def sources(self) -> set[str]:
        """The `source` tags of stored episodes (which log episode each came from)."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT source FROM episodes") if r[0]}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            episodes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0) "
                                        "FROM episodes").fetchone()
            types = dict(self._db.execute(
                "SELECT COALESCE(task_type, '?'), COUNT(*) FROM episodes GROUP BY 1").fetchall())
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return {
            "path": str(self.path), "episodes": episodes[0], "steps": len(self),
            "collection_cost_usd": float(episodes[1]), "task_types": types,
            "embedding_model": self.meta["embedding_model"], "index": self.meta.get("index"),
            "size_bytes": size,
        }
