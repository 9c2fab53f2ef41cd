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
appends: rows and vectors are durable when `add` returns, and `index.faiss` is a cache of them.
On open, an index missing its newest vectors is topped up from ``vectors.f32``, and an
unreadable or inconsistent one is rebuilt from it; vectors left over from an `add` that never
committed (a crash) are cut off. One process writes a store at a time. Known secrets are
scrubbed from every text before it is embedded or stored (`agentkd.secrets.scrub_value`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from agentkd.config import KeyWeights, Retrieval
from agentkd.errors import StoreError
from agentkd.retrieval.embedder import DEFAULT_MODEL, Embedder, get_embedder
from agentkd.retrieval.keys import StepKey
from agentkd.secrets import scrub_value

FORMAT_VERSION = 1
DEFAULT_APPROX_THRESHOLD = 50_000
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
_MAX_CANDIDATES = 16_384  # search widening stops here (see `DemoStore.search`)
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
    """Index in its episode of ``steps[0]``; the hit is ``steps[hit_step - first_step]``."""


def new_index(kind: str, width: int) -> faiss.Index:
    """An empty index of `kind` ("flat" or "hnsw") for `width`-wide inner-product search."""
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(width, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        return index
    if kind == "flat":
        return faiss.IndexFlatIP(width)
    raise StoreError(f"unknown index kind {kind!r} in the store metadata (flat or hnsw)")


def index_kind(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexHNSWFlat):
        return "hnsw"
    if isinstance(index, faiss.IndexFlat):
        return "flat"
    return type(index).__name__


def _canonical_model(name: str) -> str:
    return name.removeprefix("sentence-transformers/")


class DemoStore:
    """A persistent, incrementally growing store of teacher steps.

    >>> store = DemoStore.open("demos/", create=True)        # doctest: +SKIP
    >>> store.add(DemoEpisode(goal="put a mug in the coffee machine", steps=[...]))
    >>> store.search(StepKey(goal=..., observation=...), Retrieval(k=6))
    """

    def __init__(self, path: Path, embedder: Embedder, meta: dict[str, Any]) -> None:
        self.path = path
        self.embedder = embedder
        self.meta = meta
        self.dim = int(meta["dim"])
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path / "demos.sqlite", check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._text_cache: dict[str, np.ndarray] = {}
        self._dim_checked = False
        self._saved = 0  # vectors held by index.faiss on disk
        self._dirty = False
        self._index = self._load_index()

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, embedding_model: str | None = None,
             create: bool = False, approx_threshold: int | None = None) -> DemoStore:
        """Open the store at `path`; with `create=True` make it when it does not exist.

        Opening with an `embedding_model` other than the one the store was built with is an
        error: vectors from two models are not comparable. `approx_threshold` (steps above
        which the index becomes HNSW; default 50,000) is stored with a new store; given for an
        existing one it replaces the stored value.
        """
        folder = Path(path)
        meta_file = folder / "meta.json"
        if approx_threshold is not None and approx_threshold < 1:
            raise StoreError(f"approx_threshold must be >= 1, got {approx_threshold}")
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
                    "approx_threshold": approx_threshold or DEFAULT_APPROX_THRESHOLD,
                    "index": "flat"}
            _write_json(meta_file, meta)
            store = cls(folder, embedder, meta)
            store._dim_checked = True
            return store
        try:
            meta = json.loads(meta_file.read_text())
            stored_model = str(meta["embedding_model"])
            int(meta["dim"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"demo store metadata {meta_file} is unreadable ({exc!r})") from None
        if int(meta.get("format", 1)) > FORMAT_VERSION:
            raise StoreError(f"demo store {folder} has format {meta['format']}, newer than this "
                             f"agentkd understands ({FORMAT_VERSION}); upgrade agentkd")
        if embedding_model and _canonical_model(embedding_model) != _canonical_model(stored_model):
            raise StoreError(
                f"demo store {folder} was built with embedding model {stored_model!r}, not "
                f"{embedding_model!r}; open it with that model or build a new store"
            )
        if approx_threshold is not None and approx_threshold != meta.get("approx_threshold"):
            meta["approx_threshold"] = approx_threshold
            _write_json(meta_file, meta)
        meta.setdefault("approx_threshold", DEFAULT_APPROX_THRESHOLD)
        store = cls(folder, get_embedder(stored_model), meta)
        with store._lock:
            store._maybe_go_approximate()
        return store

    @property
    def _vector_width(self) -> int:
        return 3 * self.dim

    @property
    def _vector_file(self) -> Path:
        return self.path / "vectors.f32"

    def _stored_vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows `start:stop` of vectors.f32 (memory-mapped; only those pages are read)."""
        file = self._vector_file
        width = self._vector_width
        count = file.stat().st_size // (4 * width) if file.exists() else 0
        stop = count if stop is None else min(stop, count)
        if stop <= start:
            return np.zeros((0, width), dtype=np.float32)
        mapped = np.memmap(file, dtype=np.float32, mode="r", shape=(count, width))
        return np.ascontiguousarray(mapped[start:stop])

    def _check_vector_file(self, rows: int) -> None:
        """vectors.f32 must hold exactly `rows` vectors; cut off leftovers of a failed add."""
        file = self._vector_file
        size = file.stat().st_size if file.exists() else 0
        need = rows * self._vector_width * 4
        if size < need:
            raise StoreError(
                f"{file} is truncated: it holds {size // (self._vector_width * 4)} whole "
                f"vectors but the store has {rows} steps; the store is damaged, rebuild it "
                f"with `agentkd demos build`"
            )
        if size > need:
            warnings.warn(f"{file} holds vectors past its {rows} steps (an add that did not "
                          f"complete); cutting them off", stacklevel=4)
            with open(file, "r+b") as f:
                f.truncate(need)

    def _read_index_file(self, rows: int) -> faiss.Index | None:
        """The saved index if it is usable: readable, right kind and width, a prefix of the
        stored vectors. None otherwise (with a warning when a file was there)."""
        index_file = self.path / "index.faiss"
        if not index_file.exists():
            return None
        checksum = _read_checksum(self.path / "index.faiss.sum")
        if checksum is not None and checksum != _file_checksum(index_file):
            # Never hand a damaged file to faiss: a flipped length field makes it zero-fill
            # gigabytes before failing, and a flipped vector would read fine but rank wrongly.
            index = None
            reason = "damaged (its checksum does not match)"
        else:
            try:
                index = faiss.read_index(str(index_file))
            except (RuntimeError, MemoryError) as exc:  # MemoryError: std::bad_alloc
                index = None
                reason = f"unreadable ({str(exc).splitlines()[0][:120]})"
        if index is not None:
            kind = self.meta.get("index", "flat")
            if index.d != self._vector_width or index_kind(index) != kind:
                reason = f"not a {kind} index of width {self._vector_width}"
            elif index.ntotal > rows:
                reason = f"holds {index.ntotal} vectors but the store has {rows} steps"
            elif index.ntotal and not np.array_equal(
                    index.reconstruct(index.ntotal - 1),
                    self._stored_vectors(index.ntotal - 1, index.ntotal)[0]):
                reason = "does not match vectors.f32"
            else:
                return index
        warnings.warn(f"{index_file} is {reason}; rebuilding it from vectors.f32", stacklevel=4)
        return None

    def _load_index(self) -> faiss.Index:
        rows = int(self._db.execute("SELECT COUNT(*) FROM steps").fetchone()[0])
        self._check_vector_file(rows)
        index = self._read_index_file(rows)
        if index is None:
            index = new_index(self.meta.get("index", "flat"), self._vector_width)
        self._saved = int(index.ntotal)
        if isinstance(index, faiss.IndexHNSWFlat):
            index.hnsw.efSearch = HNSW_EF_SEARCH
        if index.ntotal < rows:  # vectors added after the index was last written
            self._add_to_index(index, index.ntotal, rows)
            self._dirty = True
        return index

    @staticmethod
    def _chunks(start: int, stop: int, size: int = 65_536) -> list[tuple[int, int]]:
        return [(lo, min(lo + size, stop)) for lo in range(start, stop, size)]

    def _add_to_index(self, index: faiss.Index, start: int, stop: int) -> None:
        for lo, hi in self._chunks(start, stop):  # bounded memory for large stores
            index.add(self._stored_vectors(lo, hi))

    # ---- adding --------------------------------------------------------------------------

    def _encode(self, texts: list[str]) -> np.ndarray:
        vectors = self.embedder.encode(texts)
        if not self._dim_checked:
            if vectors.shape[1] != self.dim:
                raise StoreError(
                    f"embedding model {self.embedder.name!r} gives {vectors.shape[1]}-d vectors "
                    f"but demo store {self.path} holds {self.dim}-d ones; rebuild the store")
            self._dim_checked = True
        return vectors

    def _embed_cached(self, texts: list[str]) -> np.ndarray:
        found = {t: self._text_cache[t] for t in dict.fromkeys(texts) if t in self._text_cache}
        missing = [t for t in dict.fromkeys(texts) if t not in found]
        if missing:
            encoded = dict(zip(missing, self._encode(missing), strict=True))
            if len(self._text_cache) + len(missing) > 4096:
                self._text_cache.clear()
            self._text_cache.update(encoded)
            found.update(encoded)
        return np.stack([found[t] for t in texts])

    def _vectors(self, episodes: Sequence[DemoEpisode]) -> np.ndarray:
        """[goal ‖ plan ‖ observation] rows of every step of `episodes`, in order.

        All observations go to the embedder in one call: sorted into length buckets, they
        embed several times faster than episode by episode.
        """
        goals = self._embed_cached([e.goal for e in episodes])
        plans = [e.plan for e in episodes if e.plan]
        plan_of = dict(zip(plans, self._embed_cached(plans), strict=True)) if plans else {}
        obs = self._encode([s.observation for e in episodes for s in e.steps])
        zero = np.zeros(self.dim, np.float32)
        heads = np.concatenate([
            np.tile(np.concatenate([goal, plan_of.get(e.plan, zero)]), (len(e.steps), 1))
            for e, goal in zip(episodes, goals, strict=True)])
        return np.ascontiguousarray(np.hstack([heads, obs]), dtype=np.float32)

    def add(self, episode: DemoEpisode) -> int:
        """Add one episode's steps; returns its id. Empty episodes are rejected.

        Rows and vectors are durable when this returns; if it fails, the store is unchanged.
        """
        return self.add_many([episode])[0]

    def add_many(self, episodes: Sequence[DemoEpisode]) -> list[int]:
        """Add several episodes at once (one embedding call, one commit); returns their ids.

        All or nothing: if it fails, none of them is added.
        """
        episodes = list(episodes)
        for episode in episodes:
            if not episode.steps:
                raise StoreError("a demo episode needs at least one step")
            if not episode.goal:
                raise StoreError("a demo episode needs a goal (the task description)")
        if not episodes:
            return []
        episodes = _scrubbed(episodes)
        vectors = self._vectors(episodes)
        with self._lock:
            first_row = int(self._index.ntotal)
            file = self._vector_file
            size = file.stat().st_size if file.exists() else 0
            if size != first_row * self._vector_width * 4:
                raise StoreError(f"{file} changed under this process (another writer?); "
                                 f"reopen the store")
            ids: list[int] = []
            try:
                row = first_row
                for episode in episodes:
                    cur = self._db.execute(
                        "INSERT INTO episodes(source, task_id, task_type, goal, plan, success,"
                        " cost_usd) VALUES (?,?,?,?,?,?,?)",
                        (episode.source, episode.task_id, episode.task_type, episode.goal,
                         episode.plan, int(episode.success), episode.cost_usd),
                    )
                    ids.append(int(cur.lastrowid or 0))
                    self._db.executemany(
                        "INSERT INTO steps(id, episode_id, idx, observation, reasoning, action)"
                        " VALUES (?,?,?,?,?,?)",
                        [(row + i, ids[-1], i, s.observation, s.reasoning, s.action)
                         for i, s in enumerate(episode.steps)],
                    )
                    row += len(episode.steps)
                with open(file, "ab") as f:
                    vectors.tofile(f)
                    f.flush()
                    os.fsync(f.fileno())
                self._db.commit()
            except BaseException:
                self._db.rollback()
                if file.exists():
                    with open(file, "r+b") as f:
                        f.truncate(size)
                raise
            self._index.add(vectors)
            self._dirty = True
            self._maybe_go_approximate()
        return ids

    def _maybe_go_approximate(self) -> None:
        if (self.meta.get("index") == "flat"
                and self._index.ntotal >= int(self.meta["approx_threshold"])):
            index = new_index("hnsw", self._vector_width)
            self._add_to_index(index, 0, int(self._index.ntotal))
            self._index = index
            self.meta["index"] = "hnsw"
            self._saved = 0
            self._dirty = True
            # The index goes first: meta saying "hnsw" beside a flat file means a rebuild.
            self.flush(force=True)
            _write_json(self.path / "meta.json", self.meta)

    def flush(self, force: bool = False) -> None:
        """Write the index file when it lags far enough behind (always with `force`).

        Rows and vectors are durable as soon as `add` returns; the index file is a cache that
        `open` tops up from vectors.f32, so it is rewritten (a full write) only once the steps
        missing from it reach 2% of the store or 256 steps, and on `close`.
        """
        with self._lock:
            lag = int(self._index.ntotal) - self._saved
            if self._dirty and (force or lag >= max(256, int(self._index.ntotal) // 50)):
                tmp = self.path / "index.faiss.tmp"
                faiss.write_index(self._index, str(tmp))
                # A crash between the two renames leaves a checksum that does not match:
                # the index is then rebuilt from vectors.f32 on open, never trusted.
                sum_tmp = self.path / "index.faiss.sum.tmp"
                sum_tmp.write_text(_file_checksum(tmp))
                os.replace(tmp, self.path / "index.faiss")
                os.replace(sum_tmp, self.path / "index.faiss.sum")
                self._saved = int(self._index.ntotal)
                self._dirty = False

    def close(self) -> None:
        with self._lock:
            try:
                self._db.execute("SELECT 1")
            except sqlite3.ProgrammingError:
                return  # already closed
            self.flush(force=True)
            self._db.close()

    def __enter__(self) -> DemoStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- searching -----------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def query_vector(self, key: StepKey, weights: KeyWeights) -> np.ndarray:
        """The (1, 3·dim) query for `key`: each part's embedding times its weight."""
        parts = [key.goal, key.plan, key.observation]
        texts = [t for t in parts if t]
        vecs = dict(zip(texts, self._embed_cached(texts), strict=True)) if texts else {}
        zero = np.zeros(self.dim, np.float32)
        return np.concatenate([
            weights.goal * vecs[key.goal] if key.goal else zero,
            weights.plan * vecs[key.plan] if key.plan else zero,
            weights.observation * vecs[key.observation] if key.observation else zero,
        ]).astype(np.float32)[None, :]

    def search_rows(self, query: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw index search: (scores, row ids) of the `n` best steps."""
        with self._lock:
            scores, rows = self._index.search(np.ascontiguousarray(query, dtype=np.float32),
                                              max(1, min(n, len(self))))
        return scores[0], rows[0]

    def search(self, key: StepKey, config: Retrieval | None = None) -> list[DemoWindow]:
        """The best step windows for `key`, best first, at most `config.k` of them.

        Each window is a matching step with `window_before` steps before and `window_after`
        after it (fewer at the edges of its episode). At most `max_hits_per_episode` windows
        come from one episode, and windows of one episode never overlap. When the best steps
        crowd into few episodes the candidate list is widened until `k` windows are found.
        """
        config = config or Retrieval.model_validate({})
        if len(self) == 0 or not (key.goal or key.plan or key.observation):
            return []
        return self.search_vector(self.query_vector(key, config.weights), config)

    def search_vector(self, query: np.ndarray, config: Retrieval | None = None
                      ) -> list[DemoWindow]:
        """`search` for a ready (1, 3·dim) query vector (see `query_vector`)."""
        config = config or Retrieval.model_validate({})
        total = len(self)
        if total == 0:
            return []
        n = min(total, config.k * config.max_hits_per_episode * 8 + 16)
        while True:
            scores, rows = self.search_rows(query, n)
            chosen = self._choose(scores, rows, config)
            if len(chosen) >= config.k or n >= min(total, _MAX_CANDIDATES):
                break
            n = min(total, _MAX_CANDIDATES, n * 4)
        return self._windows(chosen, config)

    def _choose(self, scores: np.ndarray, rows: np.ndarray,
                config: Retrieval) -> list[tuple[float, int, int, int]]:
        located = self._locate([int(r) for r in rows if r >= 0])
        spans_of: dict[int, list[tuple[int, int]]] = {}
        chosen: list[tuple[float, int, int, int]] = []
        for score, row in zip(scores, rows, strict=True):
            if row < 0 or int(row) not in located:
                continue
            episode_id, idx = located[int(row)]
            lo, hi = idx - config.window_before, idx + config.window_after
            spans = spans_of.setdefault(episode_id, [])
            if len(spans) >= config.max_hits_per_episode:
                continue
            if any(lo <= s_hi and s_lo <= hi for s_lo, s_hi in spans):
                continue  # overlapping windows of one episode would repeat steps
            spans.append((lo, hi))
            chosen.append((float(score), int(row), episode_id, idx))
            if len(chosen) == config.k:
                break
        return chosen

    def _locate(self, rows: Sequence[int]) -> dict[int, tuple[int, int]]:
        if not rows:
            return {}
        found: list[tuple[int, int, int]] = []
        with self._lock:
            for lo in range(0, len(rows), 900):  # SQLite's bound-parameter limit
                part = list(rows[lo:lo + 900])
                marks = ",".join("?" * len(part))
                found += self._db.execute(
                    f"SELECT id, episode_id, idx FROM steps WHERE id IN ({marks})", part
                ).fetchall()
        return {r[0]: (r[1], r[2]) for r in found}

    def _windows(self, chosen: list[tuple[float, int, int, int]],
                 config: Retrieval) -> list[DemoWindow]:
        """The windows of `chosen` hits, fetched in two queries.

        Rows of one episode are consecutive ids, so a window is an id range of its episode.
        """
        if not chosen:
            return []
        episode_ids = sorted({episode_id for _, _, episode_id, _ in chosen})
        ranges = [(episode_id, row - config.window_before, row + config.window_after)
                  for _, row, episode_id, _ in chosen]
        with self._lock:
            episodes = {r[0]: r[1:] for r in self._db.execute(
                f"SELECT id, goal, plan, task_type FROM episodes WHERE id IN "
                f"({','.join('?' * len(episode_ids))})", episode_ids)}
            found = self._db.execute(
                "SELECT id, episode_id, idx, observation, reasoning, action FROM steps WHERE "
                + " OR ".join(["(id BETWEEN ? AND ? AND episode_id = ?)"] * len(ranges)),
                [v for episode_id, lo, hi in ranges for v in (lo, hi, episode_id)],
            ).fetchall()
        by_row = {r[0]: r for r in found}
        windows = []
        for (score, row, episode_id, idx), (_, lo, hi) in zip(chosen, ranges, strict=True):
            rows = [by_row[i] for i in range(lo, hi + 1)
                    if i in by_row and by_row[i][1] == episode_id]
            goal, plan, task_type = episodes[episode_id]
            windows.append(DemoWindow(
                episode_id=episode_id, hit_step=idx, hit_row=row, score=score, goal=goal,
                plan=plan, task_type=task_type, first_step=rows[0][2],
                steps=[DemoStep(observation=o, reasoning=r, action=a)
                       for _, _, _, o, r, a in rows]))
        return windows

    def step(self, row: int) -> tuple[int, int, DemoStep]:
        """(episode id, index in its episode, step) of stored step `row` (a `hit_row`)."""
        with self._lock:
            found = self._db.execute(
                "SELECT episode_id, idx, observation, reasoning, action FROM steps WHERE id=?",
                (int(row),)).fetchone()
        if found is None:
            raise StoreError(f"demo store {self.path} has no step {row}")
        episode_id, idx, observation, reasoning, action = found
        return episode_id, idx, DemoStep(observation=observation, reasoning=reasoning,
                                         action=action)

    # ---- summaries -----------------------------------------------------------------------

    def sources(self) -> set[str]:
        """The `source` tags of stored episodes (which log episode each came from)."""
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT source FROM episodes") if r[0]}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            episodes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(cost_usd), 0), "
                                        "COALESCE(SUM(success = 0), 0) FROM episodes").fetchone()
            types = dict(self._db.execute(
                "SELECT COALESCE(task_type, '?'), COUNT(*) FROM episodes GROUP BY 1 ORDER BY 1"
            ).fetchall())
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return {
            "path": str(self.path), "episodes": episodes[0], "failed_episodes": episodes[2],
            "steps": len(self), "collection_cost_usd": float(episodes[1]), "task_types": types,
            "embedding_model": self.meta["embedding_model"], "dim": self.dim,
            "index": self.meta.get("index"), "size_bytes": size,
        }


def _scrubbed(episodes: list[DemoEpisode]) -> list[DemoEpisode]:
    """`episodes` with known secrets scrubbed from their texts (one lookup of the secrets
    for the whole batch). Ids and tags (task id, type, source) are kept as they are."""
    texts = scrub_value([(e.goal, e.plan, [(s.observation, s.action, s.reasoning)
                                            for s in e.steps]) for e in episodes])
    return [replace(e, goal=goal, plan=plan,
                    steps=[DemoStep(observation=o, action=a, reasoning=r) for o, a, r in steps])
            for e, (goal, plan, steps) in zip(episodes, texts, strict=True)]


def _file_checksum(file: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"blake2b-128:{digest.hexdigest()}"


def _read_checksum(file: Path) -> str | None:
    """The checksum written beside index.faiss (None for stores written before it existed)."""
    try:
        return file.read_text().strip() or None
    except OSError:
        return None


def _write_json(file: Path, value: dict[str, Any]) -> None:
    tmp = file.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, file)
