"""Incremental pre-aggregation of the log's append-only fact tables for the dashboard.

`llm_calls` and `steps` grow to millions of rows and are never updated once written
(`TrajectoryLog` only inserts them), so scanning them on every page view would be wasted work.
`Rollup` folds new rows, by id range, into small aggregate tables keyed by day, run, task type
and the few dimensions the pages group by. The aggregation itself runs as SQL on the log's own
database (SQLite or PostgreSQL); the aggregates are kept in an in-memory SQLite database owned
by this process, so the dashboard never writes to the user's log. Pages then query these
aggregates with ordinary SQL, in milliseconds.

Freshness: every refresh also aggregates the rows past the watermark into separate "tail" rows
that are replaced on the next refresh, so pages show rows committed a moment ago. On
PostgreSQL an id can become visible after a larger one (ids are drawn before commit), so the
watermark only advances over rows older than `lag_s` (default 300 s there, 0 on SQLite where
writers are serialised); younger rows are always re-read as tail.

Limitation: rows deleted from the log after they were folded in stay counted until the rollup
is rebuilt (restart the dashboard after pruning a log). A log whose ids went backwards
(replaced file, truncated tables) is detected and rebuilt automatically.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Date,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Select,
    String,
    Table,
    case,
    cast,
    create_engine,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from agentkd.log import Episode, LLMCall, Step, utcnow

IDX_CAP = 60
"""Step indexes at or above this are pooled into one bucket ("60+")."""

UNANIMOUS = 10
"""Agreement bucket of unanimous steps (agreement == 1.0); 0..9 are tenths, -1 is no agreement."""

META = MetaData()

calls_rollup = Table(
    "calls_rollup", META,
    Column("tail", Integer, nullable=False),
    Column("day", String(10), nullable=False),
    Column("run_id", String, nullable=False),
    Column("task_type", String, nullable=False),  # '' when the call has no episode or no type
    Column("role", String, nullable=False),
    Column("model", String, nullable=False),
    Column("calls", Integer, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("errors", Integer, nullable=False),
    # Prompt caching; calls logged before it was recorded count as uncached.
    Column("cached_tokens", Integer, nullable=False),
    Column("cache_write_tokens", Integer, nullable=False),
    Column("uncached_cost_usd", Float, nullable=False),
    PrimaryKeyConstraint("tail", "day", "run_id", "task_type", "role", "model"),
)

# Spend over time at minute resolution, for charts of runs that last minutes: the cost page
# bins it by minutes, hours or days depending on the range in view.
calls_by_minute = Table(
    "calls_by_minute", META,
    Column("tail", Integer, nullable=False),
    Column("day", String(10), nullable=False),
    Column("minute", String(16), nullable=False),  # 'YYYY-MM-DD HH:MM', UTC
    Column("run_id", String, nullable=False),
    Column("task_type", String, nullable=False),
    Column("role", String, nullable=False),
    Column("calls", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    PrimaryKeyConstraint("tail", "day", "minute", "run_id", "task_type", "role"),
)

steps_by_idx = Table(
    "steps_by_idx", META,
    Column("tail", Integer, nullable=False),
    Column("day", String(10), nullable=False),
    Column("run_id", String, nullable=False),
    Column("task_type", String, nullable=False),
    Column("idx", Integer, nullable=False),  # capped at IDX_CAP
    Column("steps", Integer, nullable=False),
    Column("teacher_steps", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    PrimaryKeyConstraint("tail", "day", "run_id", "task_type", "idx"),
)

# Kept apart from steps_by_idx: crossing step index with agreement would multiply the rows
# every cascade query scans, and no page needs both at once (one scan of `steps` feeds both).
steps_by_agreement = Table(
    "steps_by_agreement", META,
    Column("tail", Integer, nullable=False),
    Column("day", String(10), nullable=False),
    Column("run_id", String, nullable=False),
    Column("task_type", String, nullable=False),
    Column("bucket", Integer, nullable=False),  # agreement bucket, see UNANIMOUS
    Column("steps", Integer, nullable=False),
    Column("teacher_steps", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
    PrimaryKeyConstraint("tail", "day", "run_id", "task_type", "bucket"),
)


def day_of(column: Any, dialect: str) -> ColumnElement[Any]:
    """'YYYY-MM-DD' text of a timestamp column, in the log's SQL dialect."""
    if dialect == "sqlite":
        return func.date(column)
    if dialect == "postgresql":
        return func.to_char(column, "YYYY-MM-DD")
    return cast(column, Date)  # other dialects: a DATE, turned into text when merged


def minute_of(column: Any, dialect: str) -> ColumnElement[Any]:
    """'YYYY-MM-DD HH:MM' text of a timestamp column, in the log's SQL dialect."""
    if dialect == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M", column)
    if dialect == "postgresql":
        return func.to_char(column, "YYYY-MM-DD HH24:MI")
    return func.substr(cast(column, String), 1, 16)


def agreement_bucket(column: Any) -> ColumnElement[int]:
    # A CASE ladder, not floor(): SQLite lacks floor() unless built with math functions and
    # CAST rounds on PostgreSQL but truncates on SQLite.
    whens: list[tuple[Any, int]] = [(column.is_(None), -1), (column >= 1.0, UNANIMOUS)]
    whens += [(column >= k / 10, k) for k in range(9, 0, -1)]
    return case(*whens, else_=0)


@dataclass(frozen=True)
class _Source:
    """One log table, the SQL that aggregates an id range of it, and the rollups it feeds.

    The SQL groups by the union of its targets' keys; each target re-sums those (already
    small) groups over its own keys, so a large table is scanned once per refresh.
    """

    name: str
    table: Table
    delta: Callable[[str, int, int], Select[Any]]
    targets: tuple[Table, ...]


def _calls_delta(dialect: str, lo: int, hi: int) -> Select[Any]:
    c, e = LLMCall.__table__, Episode.__table__
    rows = (
        select(
            day_of(c.c.created_at, dialect).label("day"),
            minute_of(c.c.created_at, dialect).label("minute"),
            c.c.run_id,
            func.coalesce(e.c.task_type, "").label("task_type"),
            c.c.role,
            c.c.model,
            c.c.n,
            c.c.prompt_tokens,
            c.c.completion_tokens,
            c.c.cost_usd,
            c.c.latency_ms,
            case((c.c.error.is_not(None), 1), else_=0).label("failed"),
            func.coalesce(c.c.cached_tokens, 0).label("cached_tokens"),
            func.coalesce(c.c.cache_write_tokens, 0).label("cache_write_tokens"),
            func.coalesce(c.c.uncached_cost_usd, c.c.cost_usd).label("uncached_cost_usd"),
        )
        .select_from(c.outerjoin(e, e.c.id == c.c.episode_id))
        .where(c.c.id > lo, c.c.id <= hi)
        .subquery()
    )
    # Grouping over a subquery's plain columns: PostgreSQL rejects GROUP BY expressions whose
    # bound parameters differ from the SELECT list's, which repeated CASE expressions would.
    keys = (rows.c.day, rows.c.minute, rows.c.run_id, rows.c.task_type, rows.c.role,
            rows.c.model)
    return select(
        *keys,
        func.count().label("calls"),
        func.sum(rows.c.n).label("samples"),
        func.sum(rows.c.prompt_tokens).label("prompt_tokens"),
        func.sum(rows.c.completion_tokens).label("completion_tokens"),
        func.sum(rows.c.cost_usd).label("cost_usd"),
        func.sum(rows.c.latency_ms).label("latency_ms"),
        func.sum(rows.c.failed).label("errors"),
        func.sum(rows.c.cached_tokens).label("cached_tokens"),
        func.sum(rows.c.cache_write_tokens).label("cache_write_tokens"),
        func.sum(rows.c.uncached_cost_usd).label("uncached_cost_usd"),
    ).group_by(*keys)


def _steps_delta(dialect: str, lo: int, hi: int) -> Select[Any]:
    s, e = Step.__table__, Episode.__table__
    rows = (
        select(
            day_of(s.c.created_at, dialect).label("day"),
            e.c.run_id,
            func.coalesce(e.c.task_type, "").label("task_type"),
            case((s.c.idx >= IDX_CAP, IDX_CAP), else_=s.c.idx).label("idx"),
            agreement_bucket(s.c.agreement).label("bucket"),
            case((s.c.actor == "teacher", 1), else_=0).label("by_teacher"),
            s.c.cost_usd,
        )
        .select_from(s.join(e, e.c.id == s.c.episode_id))
        .where(s.c.id > lo, s.c.id <= hi)
        .subquery()
    )
    keys = (rows.c.day, rows.c.run_id, rows.c.task_type, rows.c.idx, rows.c.bucket)
    return select(
        *keys,
        func.count().label("steps"),
        func.sum(rows.c.by_teacher).label("teacher_steps"),
        func.sum(rows.c.cost_usd).label("cost_usd"),
    ).group_by(*keys)


SOURCES = (
    _Source("llm_calls", LLMCall.__table__, _calls_delta,  # type: ignore[arg-type]
            (calls_rollup, calls_by_minute)),
    _Source("steps", Step.__table__, _steps_delta,  # type: ignore[arg-type]
            (steps_by_idx, steps_by_agreement)),
)
ROLLUPS = tuple(target for source in SOURCES for target in source.targets)
VERSION = f"2/idx{IDX_CAP}/minutes/cache"
"""Changes whenever the rollup tables change meaning; a cache of another version is dropped."""


class Rollup:
    """Aggregates of `llm_calls` and `steps`, kept current by `refresh()`; thread-safe.

    Query the tables in `ROLLUPS` through `engine` while holding `lock`, summing over both
    tail values. With `cache`, the aggregates and watermarks are loaded from that SQLite file
    at start and saved back after refreshes that folded many rows, so a restarted dashboard
    reads only what the log gained meanwhile. The file holds whole snapshots, replaced
    atomically, so several dashboards may share it. It is dropped when it no longer matches
    the log (the row at a watermark is gone or changed).
    """

    def __init__(self, log_engine: Engine, *, lag_s: float | None = None,
                 chunk_rows: int = 500_000, cache: str | Path | None = None,
                 save_every_rows: int = 200_000) -> None:
        self.log_engine = log_engine
        self.dialect = log_engine.dialect.name
        self.lag = timedelta(seconds=lag_s if lag_s is not None
                             else (0.0 if self.dialect == "sqlite" else 300.0))
        self.chunk_rows = chunk_rows
        self.cache = Path(cache) if cache is not None else None
        self.save_every_rows = save_every_rows
        # StaticPool: one shared in-memory database for every thread, guarded by `lock`.
        self.engine = create_engine("sqlite://", poolclass=StaticPool,
                                    connect_args={"check_same_thread": False})
        self.lock = threading.RLock()
        self.marks = {source.name: 0 for source in SOURCES}
        self.refreshed_at: float | None = None
        self._unsaved = 0
        self.loaded_from_cache = self._load()
        if not self.loaded_from_cache:
            META.create_all(self.engine)

    def refresh(self, *, min_interval_s: float = 0.0,
                progress: Callable[[str, int, int], None] | None = None) -> None:
        """Fold new rows into the aggregates; a no-op within `min_interval_s` of the last."""
        with self.lock:
            now = time.monotonic()
            if self.refreshed_at is not None and now - self.refreshed_at < min_interval_s:
                return
            for source in SOURCES:
                self._refresh(source, progress)
            self.refreshed_at = time.monotonic()
            if self.cache is not None and self._unsaved >= self.save_every_rows:
                self.save()

    def rebuild(self) -> None:
        with self.lock:
            self._reset()
            self.refresh()

    def _reset(self) -> None:
        with self.engine.begin() as conn:
            for table in ROLLUPS:
                conn.execute(delete(table))
        self.marks = {source.name: 0 for source in SOURCES}

    def _refresh(self, source: _Source,
                 progress: Callable[[str, int, int], None] | None) -> None:
        ident = source.table.c.id
        with self.log_engine.connect() as log:
            top = int(log.scalar(select(func.max(ident))) or 0)
            mark = self.marks[source.name]
            if top < mark:  # ids went backwards: another log now lives at this URL
                self._reset()
                mark = 0
            safe = top
            if self.lag:
                cutoff = utcnow() - self.lag
                safe = int(log.scalar(select(func.max(ident)).where(
                    ident > mark, ident <= top, source.table.c.created_at < cutoff)) or mark)
            lo = mark
            while lo < safe:
                hi = min(safe, lo + self.chunk_rows)
                rows = log.execute(source.delta(self.dialect, lo, hi)).all()
                with self.engine.begin() as conn:
                    for table in source.targets:
                        self._merge(conn, table, rows, tail=0)
                self.marks[source.name] = lo = hi
                self._unsaved += hi - mark
                mark = hi
                if progress is not None:
                    progress(source.name, hi, top)
            tail = log.execute(source.delta(self.dialect, safe, top)).all() if top > safe else []
            log.rollback()  # read-only: end the snapshot so PostgreSQL holds no transaction
        with self.engine.begin() as conn:
            for table in source.targets:
                conn.execute(delete(table).where(table.c.tail == 1))
                self._merge(conn, table, tail, tail=1)

    @staticmethod
    def _merge(conn: Connection, table: Table, rows: Sequence[Any], *, tail: int) -> None:
        if not rows:
            return
        keys = [c.name for c in table.primary_key.columns if c.name != "tail"]
        measures = [c.name for c in table.columns if c.name not in keys and c.name != "tail"]
        groups: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            data = row._asdict()
            data["day"] = str(data["day"])
            key = tuple(data[k] for k in keys)
            sums = groups.get(key)
            if sums is None:
                groups[key] = [data[m] or 0 for m in measures]
            else:
                for i, m in enumerate(measures):
                    sums[i] += data[m] or 0
        stmt = sqlite_insert(table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["tail", *keys],
            set_={m: table.c[m] + stmt.excluded[m] for m in measures},
        )
        conn.execute(stmt, [{"tail": tail, **dict(zip(keys, key, strict=True)),
                             **dict(zip(measures, sums, strict=True))}
                            for key, sums in groups.items()])

    # -- the on-disk cache --------------------------------------------------------------

    def _fingerprint(self) -> dict[str, str]:
        """Per source: the watermark and the timestamp of the row at it, as text."""
        out = {}
        with self.log_engine.connect() as log:
            for source in SOURCES:
                mark = self.marks[source.name]
                stamp = log.scalar(select(source.table.c.created_at)
                                   .where(source.table.c.id == mark)) if mark else None
                out[source.name] = f"{mark}@{stamp}"
            log.rollback()
        return out

    def save(self) -> None:
        """Write a snapshot to `cache` (atomically: a temporary file, then a rename)."""
        if self.cache is None:
            return
        with self.lock:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            state = {"version": VERSION, **self._fingerprint()}
            with self.engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS rollup_state "
                                     "(key TEXT PRIMARY KEY, value TEXT)")
                conn.exec_driver_sql("DELETE FROM rollup_state")
                conn.exec_driver_sql("INSERT INTO rollup_state VALUES (?, ?)",
                                     list(state.items()))
            tmp = self.cache.with_name(f".{self.cache.name}.{os.getpid()}.tmp")
            target = sqlite3.connect(tmp)
            try:
                with self.engine.connect() as conn:
                    source = conn.connection.dbapi_connection
                    assert isinstance(source, sqlite3.Connection)
                    source.backup(target)
            finally:
                target.close()
            os.replace(tmp, self.cache)
            self._unsaved = 0

    def _load(self) -> bool:
        if self.cache is None or not self.cache.is_file():
            return False
        try:
            with closing(sqlite3.connect(f"file:{self.cache}?mode=ro", uri=True)) as disk, \
                    self.engine.connect() as conn:
                target = conn.connection.dbapi_connection
                assert isinstance(target, sqlite3.Connection)
                disk.backup(target)
                state: dict[str, Any] = dict(
                    conn.exec_driver_sql("SELECT key, value FROM rollup_state").all())
        except sqlite3.Error:
            state = {}
        marks = {}
        for source in SOURCES:
            mark = str(state.get(source.name, "")).split("@", 1)[0]
            marks[source.name] = int(mark) if mark.isdigit() else -1
        self.marks = {name: max(mark, 0) for name, mark in marks.items()}
        if state.get("version") != VERSION or min(marks.values()) < 0 or \
                {k: state.get(k) for k in self.marks} != self._fingerprint():
            with self.engine.begin() as conn:  # stale or foreign: start from nothing
                for table in [*ROLLUPS, "rollup_state"]:
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {getattr(table, 'name', table)}")
            self.marks = {source.name: 0 for source in SOURCES}
            return False
        return True
