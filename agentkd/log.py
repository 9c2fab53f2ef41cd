"""The SQL trajectory log: runs, episodes, steps and LLM calls (SQLAlchemy 2).

Tables are created on first use. Every step is written, with its LLM calls and the episode's
running totals, in one transaction as soon as it completes, so a crash mid-episode loses
nothing already served. SQLite runs in WAL mode with a busy timeout so several processes can
write one file; PostgreSQL is the target for real multi-process runs.

Every text written goes through `agentkd.secrets.scrub_value` first, so a key that reaches
the content (an observation echoing `env`, a pasted config) is stored as ``[REDACTED]``.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DatabaseError,
    IntegrityError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.pool import NullPool

from agentkd.episode import messages_hash
from agentkd.errors import ConfigError, MissingLogError
from agentkd.secrets import scrub, scrub_value


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class _Text(TypeDecorator[str]):
    """Text that PostgreSQL accepts whatever it holds: NUL characters (valid in Python and in
    SQLite, refused by PostgreSQL text columns) are written as U+FFFD there, so an agent
    observation with a NUL byte cannot make a served step unloggable."""

    impl: Any = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        if value and dialect.name == "postgresql" and "\x00" in value:
            return value.replace("\x00", "\ufffd")
        return value


class _String(_Text):
    impl = String
    cache_ok = True


class Run(Base):
    """One configured run: a mode, a teacher and a student, many episodes."""

    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    mode: Mapped[str] = mapped_column(String(16))
    teacher: Mapped[str] = mapped_column(String(256))
    student: Mapped[str | None] = mapped_column(String(256), nullable=True)
    label: Mapped[str | None] = mapped_column(String(256), nullable=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Episode(Base):
    """One task attempt. `status`: running, success, failure, done (no outcome given), error,
    budget (stopped by a per-episode cap) or interrupted (its worker died, or a run cap)."""

    __tablename__ = "episodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id"), index=True)
    task_id: Mapped[str] = mapped_column(_String(512))
    task_type: Mapped[str | None] = mapped_column(_String(128), nullable=True)
    goal: Mapped[str | None] = mapped_column(_Text, nullable=True)
    plan: Mapped[str | None] = mapped_column(_Text, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    success: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    reward: Mapped[float | None] = mapped_column(Float, nullable=True)
    n_steps: Mapped[int] = mapped_column(Integer, default=0)
    teacher_steps: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(_Text, nullable=True)
    info: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    __table_args__ = (Index("ix_episodes_run_task", "run_id", "task_id"),)


class Step(Base):
    """One agent step: what the agent sent, what the student sampled, who acted."""

    __tablename__ = "steps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    prompt_hash: Mapped[str] = mapped_column(String(64))
    new_messages: Mapped[list[Any]] = mapped_column(JSON, default=list)
    observation: Mapped[str | None] = mapped_column(_Text, nullable=True)
    demo_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    demo_block: Mapped[str | None] = mapped_column(_Text, nullable=True)
    samples: Mapped[list[Any]] = mapped_column(JSON, default=list)
    agreement: Mapped[float | None] = mapped_column(Float, nullable=True)
    verdict: Mapped[str] = mapped_column(String(24))
    actor: Mapped[str] = mapped_column(String(16))
    final_action: Mapped[str | None] = mapped_column(_Text, nullable=True)
    final_text: Mapped[str | None] = mapped_column(_Text, nullable=True)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Added with calibration; nullable so logs written before them still open (see
    # `_add_missing_columns`). `signals`: agreement signals and the nearest demo's action;
    # `shadow`: the step was drawn into the labelled (calibration) sample; `teacher_action`:
    # the teacher's action on such a step; `student_correct`: the student's majority action
    # is equivalent to it; `teacher_text`: the teacher's answer text on such a step where the
    # student acted (where the teacher acted it is `final_text`); an export with the
    # teacher's answers trains on it (`ExportFilters.answers`).
    signals: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    shadow: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    teacher_action: Mapped[str | None] = mapped_column(_Text, nullable=True)
    student_correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    teacher_text: Mapped[str | None] = mapped_column(_Text, nullable=True)
    __table_args__ = (UniqueConstraint("episode_id", "idx", name="uq_steps_episode_idx"),)


class LLMCall(Base):
    """One request to a provider (n samples in one request count as one call)."""

    __tablename__ = "llm_calls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(128), index=True)
    episode_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    step_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    role: Mapped[str] = mapped_column(String(24))
    model: Mapped[str] = mapped_column(String(256))
    provider: Mapped[str | None] = mapped_column(String(64), nullable=True)
    n: Mapped[int] = mapped_column(Integer, default=1)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(_Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Added with prompt-cache accounting; nullable so older logs still open (None: not
    # recorded). `cached_tokens` / `cache_write_tokens`: prompt tokens read from / written
    # to the provider's prompt cache (part of `prompt_tokens`); `reasoning_tokens`: part of
    # `completion_tokens`; `uncached_cost_usd`: the call at the input price for every prompt
    # token; `provider_cost_usd`: the cost the provider stated, when it did.
    cached_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cache_write_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reasoning_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uncached_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)
    provider_cost_usd: Mapped[float | None] = mapped_column(Float, nullable=True)


@dataclass
class CallRecord:
    """What one LLM call cost; built by `agentkd.llm`, written with its step."""

    role: str
    model: str
    provider: str | None
    n: int = 1
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    latency_ms: float = 0.0
    error: str | None = None
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    uncached_cost_usd: float | None = None
    """None: the same as `cost_usd` (no cache credit recorded)."""
    provider_cost_usd: float | None = None


@dataclass
class StepRecord:
    """One served step, ready to be written."""

    idx: int
    prompt_hash: str
    new_messages: list[dict[str, Any]]
    verdict: str
    actor: str
    observation: str | None = None
    demo_ids: list[int] = field(default_factory=list)
    demo_block: str | None = None
    samples: list[dict[str, Any]] = field(default_factory=list)
    agreement: float | None = None
    final_action: str | None = None
    final_text: str | None = None
    latency_ms: float = 0.0
    signals: dict[str, Any] | None = None
    shadow: bool | None = None
    teacher_action: str | None = None
    student_correct: bool | None = None
    teacher_text: str | None = None


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"log must be a SQLAlchemy URL such as 'sqlite:///agentkd.db' or "
            f"'postgresql+psycopg://user@host/db', got {scrub(url)!r}"
        ) from None
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_file(parsed: URL) -> str | None:
    """The path of the file a SQLite URL names (None: in memory, or a `file:` URI)."""
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:" \
            or database.startswith("file:"):
        return None
    return database


def make_engine(url: str) -> Engine:
    """An engine for `url` (any SQLAlchemy URL); SQLite files get WAL and a busy timeout."""
    parsed = _parse(url)
    if parsed.get_backend_name() == "sqlite":
        file = _sqlite_file(parsed)
        if file is not None:
            os.makedirs(os.path.dirname(os.path.abspath(file)), exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=20)


def require_log(url: str) -> None:
    """Raise `MissingLogError` unless `url` holds an agentkd log (its `runs` table).

    Creates nothing and changes nothing: SQLite would create a missing file on connect, and
    the log's WAL pragma would convert a foreign database, so neither is reached.
    """
    parsed = _parse(url)
    shown = scrub(parsed.render_as_string(hide_password=True))
    file = _sqlite_file(parsed)
    if file is not None and not os.path.isfile(file):
        raise MissingLogError(f"no agentkd log at {shown}: there is no file "
                              f"{os.path.abspath(file)}; check the log's path (--log)")
    probe = create_engine(parsed, poolclass=NullPool)
    try:
        found = inspect(probe).has_table(Run.__tablename__)
    except DatabaseError as exc:  # unreachable server, a file that is not SQLite, ...
        raise ConfigError(f"cannot open the log at {shown}: {scrub(str(exc.orig))}") from None
    finally:
        probe.dispose()
    if not found:
        raise MissingLogError(
            f"no agentkd log at {shown}: the database has no agentkd tables (no "
            f"{Run.__tablename__!r} table); check the log's URL (--log)")


class TrajectoryLog:
    """Writer and reader of the SQL log at `url`.

    With `create=False` (what commands that only read the log use) the log must already
    exist (see `require_log`), where a writer would start an empty one.
    """

    def __init__(self, url: str = "sqlite:///agentkd.db", *, create: bool = True) -> None:
        self.url = url
        if not create:
            require_log(url)
        self.engine = make_engine(url)
        self._lock = threading.Lock()
        self._is_sqlite = self.engine.dialect.name == "sqlite"
        self._prompts: dict[int, _LoggedPrompt] = {}
        for attempt in range(5):
            try:
                Base.metadata.create_all(self.engine)
                break
            except (OperationalError, IntegrityError, ProgrammingError) as exc:
                # Processes opening a new log at once race to create its tables: the loser
                # sees "already exists"; a second look finds them.
                if attempt < 4 and _lost_create_race(exc):
                    continue
                raise ConfigError(
                    f"cannot open the log at {scrub(url)!r}: {scrub(str(exc.orig))}"
                ) from None
        _add_missing_columns(self.engine)

    def __repr__(self) -> str:
        return f"TrajectoryLog({scrub(self.url)!r})"

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def ensure_run(
        self,
        run_id: str,
        *,
        mode: str,
        teacher: str,
        student: str | None,
        label: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> str:
        """Create the run row if it does not exist yet (resuming a run reuses it).

        Several processes may start the same run at once; the ones that lose the insert race
        reuse the winner's row.
        """
        try:
            with self.session() as s, s.begin():
                existing = s.get(Run, run_id)
                if existing is None:
                    s.add(Run(id=run_id, mode=mode, teacher=teacher, student=student,
                              label=scrub_value(label), config=scrub_value(config or {})))
        except IntegrityError:
            existing = None  # another process inserted it between our read and our insert
        if existing is None:
            with self.session() as s:
                existing = s.get(Run, run_id)
        if existing is not None and existing.mode != mode:
            raise ConfigError(
                f"run {run_id!r} already exists in the log with mode {existing.mode!r}; "
                f"pick another run id for mode {mode!r}"
            )
        return run_id

    def start_episode(
        self,
        run_id: str,
        task_id: str,
        *,
        task_type: str | None = None,
        goal: str | None = None,
        plan: str | None = None,
    ) -> int:
        goal, plan = scrub_value((goal, plan))
        with self.session() as s, s.begin():
            episode = Episode(run_id=run_id, task_id=task_id, task_type=task_type, goal=goal,
                              plan=plan, status="running")
            s.add(episode)
            s.flush()
            return episode.id

    def update_episode(self, episode_id: int, **values: Any) -> None:
        values = {name: scrub_value(value) for name, value in values.items()}
        with self.session() as s, s.begin():
            s.execute(update(Episode).where(Episode.id == episode_id).values(**values))

    def record_step(self, episode_id: int, run_id: str, step: StepRecord,
                    calls: Sequence[CallRecord]) -> int:
        """Write a step, its calls and the episode's new totals in one transaction."""
        cost = sum(c.cost_usd for c in calls)
        texts = scrub_value({
            "new_messages": step.new_messages, "observation": step.observation,
            "demo_block": step.demo_block, "samples": step.samples,
            "final_action": step.final_action, "final_text": step.final_text,
            "signals": step.signals, "teacher_action": step.teacher_action,
            "teacher_text": step.teacher_text})
        prompt_hash = self._logged_prompt_hash(episode_id, step, texts["new_messages"])
        # Core statements, not the ORM unit of work: this runs on every agent step.
        with self._write_lock(), self.engine.begin() as conn:
            step_id = conn.execute(
                insert(Step).returning(Step.id),
                {**texts, "episode_id": episode_id, "idx": step.idx,
                 "prompt_hash": prompt_hash, "demo_ids": step.demo_ids,
                 "agreement": step.agreement, "verdict": step.verdict, "actor": step.actor,
                 "cost_usd": cost, "latency_ms": step.latency_ms, "created_at": utcnow(),
                 "shadow": step.shadow, "student_correct": step.student_correct},
            ).scalar_one()
            self._insert_calls(conn, run_id, episode_id, step_id, calls)
            conn.execute(
                update(Episode)
                .where(Episode.id == episode_id)
                .values(
                    n_steps=Episode.n_steps + 1,
                    teacher_steps=Episode.teacher_steps + (1 if step.actor == "teacher" else 0),
                    cost_usd=Episode.cost_usd + cost,
                )
            )
            return int(step_id)

    def _logged_prompt_hash(self, episode_id: int, step: StepRecord,
                            logged: list[dict[str, Any]]) -> str:
        """The hash of the full prompt as the log holds it (scrubbed), so that the prompt
        rebuilt from the logged turns (`agentkd.export.step_prompts`) matches its hash.

        `step.prompt_hash` is that of the agent's raw prompt; the two differ only once a
        secret was scrubbed from this episode's turns, so the scrubbed prompt is hashed
        only then. Each episode's steps come one at a time, so its entry needs no lock.
        """
        prompt = self._prompts.get(episode_id)
        changed = logged != step.new_messages
        # A step logs the turns appended since the previous one, or all of them when the
        # agent rewrote its history: then they alone hash to the raw prompt's hash.
        if prompt is None or messages_hash(step.new_messages) == step.prompt_hash:
            prompt = self._prompts[episode_id] = _LoggedPrompt(list(logged), changed)
        else:
            prompt.messages.extend(logged)
            prompt.scrubbed = prompt.scrubbed or changed
        return messages_hash(prompt.messages) if prompt.scrubbed else step.prompt_hash

    def record_calls(self, run_id: str, episode_id: int | None,
                     calls: Iterable[CallRecord]) -> None:
        """Write calls that belong to no step (e.g. a failed teacher call, memory calls)."""
        calls = list(calls)
        cost = sum(c.cost_usd for c in calls)
        with self._write_lock(), self.engine.begin() as conn:
            self._insert_calls(conn, run_id, episode_id, None, calls)
            if episode_id is not None and cost:
                conn.execute(update(Episode).where(Episode.id == episode_id)
                             .values(cost_usd=Episode.cost_usd + cost))

    @staticmethod
    def _insert_calls(conn: Connection, run_id: str, episode_id: int | None,
                      step_id: int | None, calls: Sequence[CallRecord]) -> None:
        if not calls:
            return
        now = utcnow()
        conn.execute(insert(LLMCall), [
            {"run_id": run_id, "episode_id": episode_id, "step_id": step_id, "role": c.role,
             "model": c.model, "provider": c.provider, "n": c.n,
             "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
             "cost_usd": c.cost_usd, "latency_ms": c.latency_ms,
             "error": scrub(c.error) if c.error else None, "created_at": now,
             "cached_tokens": c.cached_tokens, "cache_write_tokens": c.cache_write_tokens,
             "reasoning_tokens": c.reasoning_tokens, "uncached_cost_usd": c.uncached_cost_usd,
             "provider_cost_usd": c.provider_cost_usd}
            for c in calls
        ])

    def finish_episode(self, episode_id: int, *, status: str, success: bool | None,
                       reward: float | None = None, error: str | None = None,
                       info: dict[str, Any] | None = None) -> None:
        self._prompts.pop(episode_id, None)
        self.update_episode(episode_id, status=status, success=success, reward=reward,
                            error=error or None, info=info or {}, finished_at=utcnow())

    def mark_interrupted(self, run_id: str, task_id: str | None = None) -> int:
        """Mark episodes of `run_id` still 'running' (their worker died) as interrupted; with
        `task_id` only that task's (one lost worker, while the others play on)."""
        match = [Episode.run_id == run_id, Episode.status == "running"]
        if task_id is not None:
            match.append(Episode.task_id == task_id)
        with self.engine.begin() as conn:
            result = conn.execute(
                update(Episode).where(*match).values(status="interrupted", finished_at=utcnow())
            )
            return int(result.rowcount or 0)

    def finished_task_ids(self, run_id: str) -> set[str]:
        """Task ids of `run_id` whose episode ended (success, failure, done, error or
        budget: a per-episode cap would stop a replay at the same place)."""
        with self.session() as s:
            rows = s.execute(
                select(Episode.task_id).where(
                    Episode.run_id == run_id,
                    Episode.status.in_(("success", "failure", "done", "error", "budget")),
                )
            )
            return {r[0] for r in rows}

    def run_cost(self, run_id: str) -> float:
        with self.session() as s:
            total = s.execute(select(func.coalesce(func.sum(LLMCall.cost_usd), 0.0))
                              .where(LLMCall.run_id == run_id)).scalar_one()
            return float(total)

    def steps(self, episode_id: int) -> list[Step]:
        with self.session() as s:
            return list(s.scalars(select(Step).where(Step.episode_id == episode_id)
                                  .order_by(Step.idx)))

    def episode(self, episode_id: int) -> Episode:
        with self.session() as s:
            episode = s.get(Episode, episode_id)
            if episode is None:
                raise KeyError(f"no episode {episode_id} in the log")
            return episode

    def episodes(self, run_id: str) -> list[Episode]:
        with self.session() as s:
            return list(s.scalars(select(Episode).where(Episode.run_id == run_id)
                                  .order_by(Episode.id)))

    def calls(self, episode_id: int) -> list[LLMCall]:
        with self.session() as s:
            return list(s.scalars(select(LLMCall).where(LLMCall.episode_id == episode_id)
                                  .order_by(LLMCall.id)))

    def _write_lock(self) -> threading.Lock | _NoLock:
        # SQLite allows one writer at a time; serialising our own threads avoids busy retries.
        return self._lock if self._is_sqlite else _NoLock()

    def close(self) -> None:
        self.engine.dispose()


@dataclass
class _LoggedPrompt:
    """An open episode's latest full prompt as logged; `scrubbed`: it differs from the raw
    prompt (a secret was taken out of it)."""

    messages: list[dict[str, Any]]
    scrubbed: bool


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns newer versions of agentkd declare to an older log.

    `create_all` creates missing tables but never alters existing ones. Processes opening
    the same old log at once race to add a column: the loser's "duplicate column" is fine.
    """
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise ConfigError(
                    f"the log's table {table.name!r} lacks the required column "
                    f"{column.name!r}; it was written by an incompatible agentkd version")
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.execute(text(
                        f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {kind}'))
            except (OperationalError, ProgrammingError) as exc:
                if "duplicate column" not in str(exc.orig).lower() and \
                        "already exists" not in str(exc.orig).lower():
                    raise


def _lost_create_race(exc: Exception) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return "already exists" in text or "duplicate key" in text


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
