"""The dashboard's data: filters and one function per page returning tables and charts.

Everything here is SQL (SQLAlchemy core). Small tables (`runs`, `episodes`) are queried live
in the log; the large append-only ones (`steps`, `llm_calls`) through the `Rollup` aggregates,
except for one episode's drill-down, which reads its rows by index. The overview reuses
`agentkd.report.run_summaries`, so the dashboard and `agentkd report` agree to the cent.

A page is plain data (`Page`: named `DataTable`s and Plotly figure dicts), rendered to HTML by
`agentkd.dashboard.html` or to CSV, so the same numbers reach the browser, the CSV and tests.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    case,
    event,
    func,
    inspect,
    literal_column,
    or_,
    select,
    true,
)
from sqlalchemy import column as sql_column
from sqlalchemy import table as sql_table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import ORMExecuteState, Session, with_loader_criteria

from agentkd.dashboard.rollup import (
    IDX_CAP,
    UNANIMOUS,
    Rollup,
    calls_by_minute,
    calls_rollup,
    steps_by_agreement,
    steps_by_idx,
)
from agentkd.errors import ConfigError
from agentkd.learning import downsample, learning_curves
from agentkd.log import Episode, LLMCall, Run, Step, TrajectoryLog
from agentkd.report import RunSummary, run_summaries, teacher_name

TEACHER_ROLES = ("teacher", "collect")
STUDENT_MODES = ("student", "icd", "distill")
LABEL_COLUMNS = ("teacher_label", "teacher_action")
"""A steps column holding the teacher's action for a step, if the log has one (checked in order)."""

PAGE_SIZE = 50
CURVE_WINDOW = 10
"""Episodes each point of the cascade page's learning curves averages over."""
CURVE_MAX_POINTS = 2000
"""A run with more finished episodes has its learning curves thinned to this many points."""
RATE_AXIS = {"tickformat": ".0%", "range": [0, 1]}
"""A y axis of rates: 0..100% whatever the data (autorange shows -100% when all are 0)."""
TIME_BINS = ((timedelta(hours=2), "minute", timedelta(minutes=1)),
             (timedelta(days=5), "hour", timedelta(hours=1)),
             (timedelta.max, "day", timedelta(days=1)))
"""(largest span in view, bin name, bin width): spend over time is binned by the range in
view, so a run of minutes gets bars per minute and a month one per day."""

# ---- plain data --------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """What the user narrowed the view to; empty means everything. Dates are inclusive."""

    runs: tuple[str, ...] = ()
    modes: tuple[str, ...] = ()
    task_types: tuple[str, ...] = ()  # '' selects episodes with no task type
    date_from: date | None = None
    date_to: date | None = None

    @classmethod
    def parse(cls, params: Any) -> Filters:
        """From a multi-dict of query parameters (`run`, `mode`, `task_type`, `from`, `to`)."""

        def day(name: str) -> date | None:
            raw = (params.get(name) or "").strip()
            if not raw:
                return None
            try:
                return date.fromisoformat(raw)
            except ValueError:
                raise ConfigError(f"{name!r} must be a date as YYYY-MM-DD, got {raw!r}") from None

        def many(name: str) -> tuple[str, ...]:
            return tuple(dict.fromkeys(v for v in params.getlist(name) if v is not None))

        return cls(runs=tuple(v for v in many("run") if v), modes=tuple(v for v in many("mode")
                   if v), task_types=many("task_type"), date_from=day("from"), date_to=day("to"))

    def params(self) -> list[tuple[str, str]]:
        items = [("run", r) for r in self.runs] + [("mode", m) for m in self.modes]
        items += [("task_type", t) for t in self.task_types]
        if self.date_from:
            items.append(("from", self.date_from.isoformat()))
        if self.date_to:
            items.append(("to", self.date_to.isoformat()))
        return items

    def query(self, **extra: Any) -> str:
        """URL query string carrying these filters plus `extra` (None values dropped)."""
        items = self.params() + [(k, str(v)) for k, v in extra.items() if v is not None]
        return urlencode(items)

    @property
    def narrows_episodes(self) -> bool:
        """True when filters cut runs' episodes (not just pick runs)."""
        return bool(self.task_types or self.date_from or self.date_to)

    @property
    def empty(self) -> bool:
        return not self.params()


@dataclass(frozen=True)
class Col:
    """A table column. `kind` picks the formatting: text int float usd pct ratio ms link."""

    key: str
    label: str
    kind: str = "text"
    missing: str | None = None
    """Key of the row's text saying why this column's value is None, shown in its place."""


@dataclass
class DataTable:
    name: str
    title: str
    columns: list[Col]
    rows: list[dict[str, Any]]
    note: str | None = None

    def csv(self) -> str:
        return "".join(csv_lines(self.columns, self.rows))


@dataclass
class Chart:
    name: str
    title: str
    figure: dict[str, Any]


@dataclass
class Page:
    title: str
    tables: list[DataTable] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    kpis: list[tuple[str, str, Any, str]] = field(default_factory=list)  # key, label, value, kind
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def table(self, name: str) -> DataTable:
        for t in self.tables:
            if t.name == name:
                return t
        raise KeyError(name)


def csv_lines(columns: Sequence[Col], rows: Iterable[dict[str, Any]]) -> Iterator[str]:
    """CSV text, header first, raw (unformatted) values; streams `rows`."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow([c.key for c in columns])
    for row in rows:
        writer.writerow(["" if row.get(c.key) is None else row.get(c.key) for c in columns])
        if buf.tell() > 1 << 16:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _ratio(num: float | int | None, den: float | int | None) -> float | None:
    return float(num) / float(den) if num is not None and den else None


def default_cache(url: str) -> Path:
    """Where `agentkd dashboard` keeps the aggregates of the log at `url` between starts."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"the log must be a SQLAlchemy URL, got {url!r}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        key = "sqlite:" + os.path.abspath(parsed.database)  # same file from any directory
    else:
        key = parsed.render_as_string(hide_password=True)
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return root / "agentkd" / "dashboard" / f"{digest}.sqlite"


class _EpisodeSlice(TrajectoryLog):
    """The log seen through an episode filter, so `run_summaries` can summarise a slice.

    Every ORM query of its sessions gets the filter wherever `Episode` appears, JOIN ON
    clauses included; report.py's own SQL and arithmetic then produce the filtered summaries,
    and the dashboard cannot drift from `agentkd report`.
    """

    def __init__(self, log: TrajectoryLog, where: ColumnElement[bool]) -> None:
        # No super().__init__(): this shares the open log's engine rather than opening one.
        self.url, self.engine, self._where = log.url, log.engine, where

    def session(self) -> Session:
        session = Session(self.engine, expire_on_commit=False)
        criteria = with_loader_criteria(Episode, self._where, include_aliases=True)

        @event.listens_for(session, "do_orm_execute")
        def _narrow(state: ORMExecuteState) -> None:
            if state.is_select:
                state.statement = state.statement.options(criteria)

        return session


def _cache_figures(row: dict[str, Any]) -> None:
    """Add a row's cache hit share and saving (from its token and spend sums)."""
    row["cache_hit_share"] = _ratio(row["cached_tokens"], row["prompt_tokens"])
    row["cache_saving_usd"] = row["uncached_usd"] - row["spend"]


def _who(role: str) -> str:
    if role in TEACHER_ROLES:
        return "teacher"
    return role if role in ("student", "memory") else "other"


def _spend_over_time(minutes: list[dict[str, Any]]) -> Chart:
    """Stacked spend per bin by who was called, the bin (minute, hour, day) fitting the
    span of the calls in view (`TIME_BINS`)."""
    stamps = [datetime.fromisoformat(r["minute"]) for r in minutes]
    span = max(stamps) - min(stamps) if stamps else timedelta(0)
    name, width = next((n, w) for limit, n, w in TIME_BINS if span <= limit)
    cut = {"minute": {}, "hour": {"minute": 0}, "day": {"hour": 0, "minute": 0}}[name]
    sums: dict[tuple[datetime, str], float] = {}
    for stamp, row in zip(stamps, minutes, strict=True):
        key = (stamp.replace(**cut), _who(row["role"]))  # type: ignore[arg-type]
        sums[key] = sums.get(key, 0.0) + row["usd"]
    bins = sorted({b for b, _ in sums})
    return Chart("spend_over_time", f"Spend per {name}, by who was called", {
        "data": [{"type": "bar", "name": who, "x": [b.isoformat(sep=" ") for b in bins],
                  "y": [sums.get((b, who), 0.0) for b in bins],
                  # Plotly's default width on a date axis is the gap between bars: with one
                  # bar that is a sliver. Bars span 90% of their bin.
                  "width": width.total_seconds() * 1000 * 0.9,
                  "hovertemplate": "%{x}<br>$%{y:.5f}<extra>" + who + "</extra>"}
                 for who in ("teacher", "student", "memory", "other")
                 if any(sums.get((b, who)) for b in bins)],
        "layout": {"barmode": "stack", "xaxis": {"type": "date"},
                   "yaxis": {"title": {"text": "USD"}}},
    })


def _cumulative_spend(minutes: list[dict[str, Any]]) -> Chart:
    """Each run's cumulative spend against the time since its first call in view, in
    minutes, hours or days (whichever fits the longest run), starting from $0."""
    runs: dict[str, list[tuple[datetime, float]]] = {}
    for row in minutes:
        runs.setdefault(row["run_id"], []).append(
            (datetime.fromisoformat(row["minute"]), row["usd"]))
    one = timedelta(minutes=1)  # a minute's spend is drawn at the end of that minute
    longest = max((max(t for t, _ in p) - min(t for t, _ in p) + one for p in runs.values()),
                  default=one)
    unit, size = next((n, w) for limit, n, w in TIME_BINS if longest <= limit)
    data = []
    for run, points in runs.items():
        first = min(t for t, _ in points)
        per_minute: dict[datetime, float] = {}
        for stamp, usd in points:
            per_minute[stamp] = per_minute.get(stamp, 0.0) + usd
        x, y, total = [0.0], [0.0], 0.0
        for stamp in sorted(per_minute):
            total += per_minute[stamp]
            x.append((stamp - first + one) / size)
            y.append(total)
        data.append({"type": "scatter", "mode": "lines+markers", "name": run, "x": x, "y": y,
                     "hovertemplate": f"{run}<br>%{{x:.1f}} {unit}s in: $%{{y:.5f}}"
                                      "<extra></extra>"})
    return Chart("cumulative_by_run", "Cumulative spend per run", {
        "data": data,
        "layout": {"xaxis": {"title": {"text": f"{unit}s since the run's first call"},
                             "rangemode": "tozero"},
                   "yaxis": {"title": {"text": "USD"}, "rangemode": "tozero"}},
    })


# ---- the dashboard's reader ----------------------------------------------------------------


class Dashboard:
    """Reads one log for the dashboard pages. Safe to share between request threads."""

    def __init__(self, log: str | TrajectoryLog, *, refresh_interval_s: float = 1.0,
                 lag_s: float | None = None, cache: str | Path | None = None) -> None:
        # The dashboard only reads: a mistyped path must not start an empty log.
        self.log = log if isinstance(log, TrajectoryLog) else TrajectoryLog(log, create=False)
        self.engine = self.log.engine
        self.dialect = self.engine.dialect.name
        self.rollup = Rollup(self.engine, lag_s=lag_s, cache=cache)
        self.refresh_interval_s = refresh_interval_s
        columns = {c["name"] for c in inspect(self.engine).get_columns("steps")}
        self.label_column = next((c for c in LABEL_COLUMNS if c in columns), None)

    def refresh(self) -> None:
        self.rollup.refresh(min_interval_s=self.refresh_interval_s)

    # -- filter helpers -----------------------------------------------------------------

    def runs(self) -> list[dict[str, Any]]:
        r = Run.__table__
        with self.engine.connect() as conn:
            rows = conn.execute(select(r.c.id, r.c.mode, r.c.teacher, r.c.student, r.c.label,
                                       r.c.created_at).order_by(r.c.created_at, r.c.id))
            return [row._asdict() for row in rows]

    def task_types(self) -> list[str]:
        self.refresh()
        with self.rollup.lock, self.rollup.engine.connect() as conn:
            found = set(conn.scalars(select(steps_by_agreement.c.task_type).distinct()))
            found |= set(conn.scalars(select(calls_rollup.c.task_type).distinct()))
        return sorted(found)

    def modes(self) -> list[str]:
        return sorted({r["mode"] for r in self.runs()})

    def selected_runs(self, f: Filters, *, modes: Sequence[str] | None = None) -> list[str] | None:
        """Run ids the filters allow (None: all runs); `modes` further restricts by mode."""
        if not f.runs and not f.modes and modes is None:
            return None
        allowed = set(f.modes or modes or ())
        return [r["id"] for r in self.runs()
                if (not f.runs or r["id"] in f.runs) and (not allowed or r["mode"] in allowed)]

    def _rollup_where(self, table: Any, f: Filters,
                      run_ids: Sequence[str] | None) -> ColumnElement[bool]:
        cond: list[ColumnElement[bool]] = []
        if run_ids is not None:
            cond.append(table.c.run_id.in_(run_ids))
        if f.task_types:
            cond.append(table.c.task_type.in_(f.task_types))
        if f.date_from:
            cond.append(table.c.day >= f.date_from.isoformat())
        if f.date_to:
            cond.append(table.c.day <= f.date_to.isoformat())
        return and_(true(), *cond)

    def _episode_where(self, f: Filters, run_ids: Sequence[str] | None) -> ColumnElement[bool]:
        e = Episode.__table__
        cond: list[ColumnElement[bool]] = []
        if run_ids is not None:
            cond.append(e.c.run_id.in_(run_ids))
        if f.task_types:
            named = [t for t in f.task_types if t]
            either = [e.c.task_type.in_(named)] if named else []
            if "" in f.task_types:
                either.append(e.c.task_type.is_(None))
            cond.append(or_(*either))
        # Episodes are placed in time by when they started, like the cost pages' calls.
        if f.date_from:
            cond.append(e.c.started_at >= datetime.combine(f.date_from, datetime.min.time()))
        if f.date_to:
            cond.append(e.c.started_at < datetime.combine(f.date_to + timedelta(days=1),
                                                          datetime.min.time()))
        return and_(true(), *cond)

    def _rollup_rows(self, query: Select[Any]) -> list[dict[str, Any]]:
        # No refresh here: a page refreshes once, first, so its tables agree with each other.
        with self.rollup.lock, self.rollup.engine.connect() as conn:
            return [row._asdict() for row in conn.execute(query)]

    # -- pages ----------------------------------------------------------------------------

    def summaries(self, f: Filters) -> list[RunSummary]:
        run_ids = self.selected_runs(f)
        if not f.narrows_episodes:
            return run_summaries(self.log, run_ids=run_ids)
        # Teacher baselines come from the same slice, so a distill run's relative cost on one
        # task type compares like with like.
        return run_summaries(_EpisodeSlice(self.log, self._episode_where(f, None)),
                             run_ids=run_ids)

    def overview(self, f: Filters) -> Page:
        summaries = self.summaries(f)
        rows = [s.model_dump() for s in summaries]
        columns = [
            Col("run_id", "run", "run"), Col("mode", "mode"), Col("teacher", "teacher"),
            Col("label", "teacher label"), Col("student", "student"),
            Col("episodes", "episodes", "int"), Col("success_rate", "success", "pct"),
            Col("success_low", "success 95% low", "pct"),
            Col("success_high", "success 95% high", "pct"),
            Col("baseline_episodes", "teacher episodes (same tasks)", "int"),
            Col("baseline_success_rate", "teacher success", "pct"),
            Col("baseline_success_low", "teacher 95% low", "pct"),
            Col("steps_per_episode", "steps/ep", "float"),
            Col("teacher_call_rate", "teacher-call rate", "pct"),
            Col("accepted_accuracy", "accepted-step accuracy", "pct"),
            Col("labelled_accepted", "labelled accepted steps", "int"),
            Col("cost_per_episode", "cost/ep", "usd"),
            Col("relative_cost", "relative cost", "ratio", missing="saving_withheld"),
            Col("break_even_episodes", "break-even eps", "int", missing="saving_withheld"),
            Col("total_cost", "total spend", "usd"),
        ]
        page = Page("Runs overview")
        page.notes.append("Teacher: " + (", ".join(sorted({teacher_name(s) for s in summaries}))
                                         or "–"))
        page.tables.append(DataTable(
            "runs", "Runs", columns, rows,
            note="Success with its 95% Wilson interval. Each run is compared with the "
                 "teacher-only episodes (mode teacher, else collect) of the same teacher on "
                 "the same task ids. Relative cost: cost per episode over the teacher's there; "
                 "break-even: demo-collection spend over the saving per episode. Both are "
                 "withheld, and say why, when the run's success on those tasks is below the "
                 "teacher's interval. Accepted-step accuracy: share of the student's accepted "
                 "steps that shadow mode's teacher label confirms."))
        total = sum(s.total_cost for s in summaries)
        episodes = sum(s.episodes for s in summaries)
        page.kpis = [
            ("runs", "runs", len(summaries), "int"),
            ("episodes", "finished episodes", episodes, "int"),
            ("total_spend", "total spend", total, "usd"),
        ]
        student = [s for s in summaries if s.relative_cost is not None
                   and s.mode in STUDENT_MODES]
        if student:
            best = min(student, key=lambda s: s.relative_cost or 0.0)
            page.kpis.append(("best_relative_cost", f"lowest relative cost ({best.run_id})",
                              best.relative_cost, "ratio"))
        names = [s.run_id for s in summaries]
        page.charts.append(Chart("cost_per_episode", "Cost per episode by run", {
            "data": [{"type": "bar", "x": names, "y": [s.cost_per_episode for s in summaries],
                      "text": [s.mode for s in summaries], "name": "cost/episode",
                      "hovertemplate": "%{x} (%{text})<br>$%{y:.5f}<extra></extra>"}],
            "layout": {"yaxis": {"title": {"text": "USD per episode"}}},
        }))
        scored = [s for s in summaries if s.relative_cost is not None
                  and s.success_rate is not None]
        # One trace per run, named in the legend and the tooltip: run ids written beside
        # the markers pile into one unreadable blob when runs score alike.
        page.charts.append(Chart("accuracy_vs_cost", "Success rate vs relative cost", {
            "data": [{"type": "scatter", "mode": "markers", "name": f"{s.run_id} ({s.mode})",
                      "x": [s.relative_cost], "y": [s.success_rate],
                      "marker": {"size": 12}, "cliponaxis": False,
                      "hovertemplate": f"{s.run_id} ({s.mode})<br>relative cost %{{x:.2f}}×"
                                       "<br>success %{y:.0%}<extra></extra>"}
                     for s in scored],
            "layout": {"xaxis": {"title": {"text": "relative cost (× teacher)"},
                                 "rangemode": "tozero"},
                       "yaxis": {"title": {"text": "success rate"}, **RATE_AXIS},
                       "legend": {"orientation": "v", "x": 1.02, "y": 1}},
        }))
        return page

    def costs(self, f: Filters) -> Page:
        self.refresh()
        t = calls_rollup
        where = self._rollup_where(t, f, self.selected_runs(f))
        teacher = func.sum(case((t.c.role.in_(TEACHER_ROLES), t.c.cost_usd), else_=0.0))
        student = func.sum(case((t.c.role == "student", t.c.cost_usd), else_=0.0))
        memory = func.sum(case((t.c.role == "memory", t.c.cost_usd), else_=0.0))
        other = func.sum(case((t.c.role.in_((*TEACHER_ROLES, "student", "memory")), 0.0),
                              else_=t.c.cost_usd))
        money = (teacher.label("teacher_usd"), student.label("student_usd"),
                 memory.label("memory_usd"), other.label("other_usd"),
                 func.sum(t.c.cost_usd).label("total_usd"), func.sum(t.c.calls).label("calls"),
                 func.sum(t.c.prompt_tokens + t.c.completion_tokens).label("tokens"))
        by_day = self._rollup_rows(select(t.c.day, *money).where(where)
                                   .group_by(t.c.day).order_by(t.c.day))
        by_run = self._rollup_rows(select(t.c.run_id, *money).where(where)
                                   .group_by(t.c.run_id).order_by(t.c.run_id))
        modes = {r["id"]: r["mode"] for r in self.runs()}
        for row in by_run:
            row["mode"] = modes.get(row["run_id"])
        money_cols = [Col("teacher_usd", "teacher", "usd"), Col("student_usd", "student", "usd"),
                      Col("memory_usd", "memory", "usd"), Col("other_usd", "other", "usd"),
                      Col("total_usd", "total", "usd"), Col("calls", "calls", "int"),
                      Col("tokens", "tokens", "int")]
        page = Page("Cost over time")
        page.tables.append(DataTable("costs_by_day", "Spend per day", [Col("day", "day"),
                                                                       *money_cols], by_day,
                                     note="Teacher includes demo collection (role collect). "
                                          "Days are UTC, from each call's timestamp."))
        page.tables.append(DataTable(
            "costs_by_run", "Spend per run",
            [Col("run_id", "run", "run"), Col("mode", "mode"), *money_cols], by_run))
        page.kpis = [("total_spend", "spend in view", sum(r["total_usd"] for r in by_day), "usd"),
                     ("teacher_spend", "teacher", sum(r["teacher_usd"] for r in by_day), "usd"),
                     ("student_spend", "student", sum(r["student_usd"] for r in by_day), "usd"),
                     ("memory_spend", "memory", sum(r["memory_usd"] for r in by_day), "usd")]
        self._cache_section(page, where)
        m = calls_by_minute
        minutes = self._rollup_rows(
            select(m.c.minute, m.c.run_id, m.c.role, func.sum(m.c.cost_usd).label("usd"))
            .where(self._rollup_where(m, f, self.selected_runs(f)))
            .group_by(m.c.minute, m.c.run_id, m.c.role).order_by(m.c.minute))
        page.charts.append(_spend_over_time(minutes))
        page.charts.append(_cumulative_spend(minutes))
        return page

    def _cache_section(self, page: Page, where: ColumnElement[bool]) -> None:
        """Prompt caching per run and model: hit share, spend with and without the credit."""
        t = calls_rollup
        rows = self._rollup_rows(
            select(t.c.run_id, t.c.model, func.sum(t.c.calls).label("calls"),
                   func.sum(t.c.prompt_tokens).label("prompt_tokens"),
                   func.sum(t.c.cached_tokens).label("cached_tokens"),
                   func.sum(t.c.cache_write_tokens).label("cache_write_tokens"),
                   func.sum(t.c.cost_usd).label("spend"),
                   func.sum(t.c.uncached_cost_usd).label("uncached_usd"))
            .where(where).group_by(t.c.run_id, t.c.model).order_by(t.c.run_id, t.c.model))
        runs: dict[str, dict[str, float]] = {}
        for row in rows:
            _cache_figures(row)
            run = runs.setdefault(row["run_id"], {"spend": 0.0, "uncached_usd": 0.0})
            run["spend"] += row["spend"]
            run["uncached_usd"] += row["uncached_usd"]
        total = {key: sum(r[key] for r in rows) for key in
                 ("prompt_tokens", "cached_tokens", "spend", "uncached_usd")}
        _cache_figures(total)
        page.kpis += [("cache_hit_share", "prompt-cache hit share", total["cache_hit_share"],
                       "pct"),
                      ("cache_saving", "saved by the prompt cache", total["cache_saving_usd"],
                       "usd"),
                      ("uncached_spend", "spend without cache credit", total["uncached_usd"],
                       "usd")]
        page.tables.append(DataTable("cache_by_run_model", "Prompt cache per run and model", [
            Col("run_id", "run", "run"), Col("model", "model"), Col("calls", "calls", "int"),
            Col("prompt_tokens", "prompt tokens", "int"),
            Col("cached_tokens", "cached tokens", "int"),
            Col("cache_write_tokens", "cache writes", "int"),
            Col("cache_hit_share", "cache hit share", "pct"), Col("spend", "spend", "usd"),
            Col("uncached_usd", "spend without cache credit", "usd"),
            Col("cache_saving_usd", "saving", "usd")], rows,
            note="Cache hit share: prompt tokens read from the provider's prompt cache (or "
                 "llama.cpp's KV cache) over all prompt tokens. Without cache credit every "
                 "prompt token is billed at the input price; the saving is the difference "
                 "(negative where cache writes cost more than the reads saved). Calls logged "
                 "before cache tokens were recorded count as uncached."))
        names = list(runs)
        page.charts.append(Chart("cache_saving_by_run", "Spend with and without cache credit", {
            "data": [{"type": "bar", "name": label, "x": names,
                      "y": [runs[r][key] for r in names],
                      "hovertemplate": "%{x}<br>$%{y:.5f}<extra>" + label + "</extra>"}
                     for key, label in (("spend", "billed (with cache credit)"),
                                        ("uncached_usd", "without cache credit"))],
            "layout": {"barmode": "group", "yaxis": {"title": {"text": "USD"}}},
        }))

    def cascade(self, f: Filters) -> Page:
        self.refresh()
        run_ids = self.selected_runs(f, modes=STUDENT_MODES)
        a, x = steps_by_agreement, steps_by_idx
        where = self._rollup_where(a, f, run_ids)
        counts = (func.sum(a.c.steps).label("steps"),
                  func.sum(a.c.teacher_steps).label("teacher_steps"))
        hist = self._rollup_rows(select(a.c.bucket, *counts).where(where, a.c.bucket >= 0)
                                 .group_by(a.c.bucket).order_by(a.c.bucket))
        by_task = self._rollup_rows(select(a.c.task_type, *counts).where(where)
                                    .group_by(a.c.task_type).order_by(a.c.task_type))
        by_idx = self._rollup_rows(
            select(x.c.idx, func.sum(x.c.steps).label("steps"),
                   func.sum(x.c.teacher_steps).label("teacher_steps"))
            .where(self._rollup_where(x, f, run_ids)).group_by(x.c.idx).order_by(x.c.idx))
        for row in hist:
            b = row["bucket"]
            row["agreement"] = "1.0" if b == UNANIMOUS else f"{b / 10:.1f}–{(b + 1) / 10:.1f}"
            row["student_steps"] = row["steps"] - row["teacher_steps"]
        for row in by_task + by_idx:
            row["teacher_call_rate"] = _ratio(row["teacher_steps"], row["steps"])
            row["student_steps"] = row["steps"] - row["teacher_steps"]
        for row in by_task:
            row["task_type"] = row["task_type"] or "(none)"
        for row in by_idx:
            row["step"] = f"{IDX_CAP}+" if row["idx"] >= IDX_CAP else str(row["idx"])
        total_steps = sum(r["steps"] for r in by_idx)
        teacher_steps = sum(r["teacher_steps"] for r in by_idx)
        gated = sum(r["steps"] for r in hist)
        page = Page("Cascade")
        page.notes.append("Steps of student-acting runs (modes student, icd, distill) unless the "
                          "mode filter says otherwise. Agreement is the share of student samples "
                          "on the majority action; only the gate (mode distill) records it.")
        page.kpis = [("steps", "steps", total_steps, "int"),
                     ("teacher_call_rate", "teacher-call rate",
                      _ratio(teacher_steps, total_steps), "pct"),
                     ("gated_steps", "gated steps", gated, "int")]
        rate_cols = [Col("steps", "steps", "int"), Col("teacher_steps", "teacher acted", "int"),
                     Col("student_steps", "student acted", "int"),
                     Col("teacher_call_rate", "teacher-call rate", "pct")]
        page.tables.append(DataTable("agreement", "Agreement histogram",
                                     [Col("agreement", "agreement"), Col("steps", "steps", "int"),
                                      Col("student_steps", "student acted (accepted)", "int"),
                                      Col("teacher_steps", "deferred to teacher", "int")], hist))
        page.tables.append(DataTable("teacher_rate_by_task", "Teacher-call rate by task type",
                                     [Col("task_type", "task type"), *rate_cols], by_task))
        page.tables.append(DataTable("teacher_rate_by_step", "Teacher-call rate by step index",
                                     [Col("step", "step"), *rate_cols], by_idx))
        labels = self._label_accuracy(f)
        if labels is None or not labels.rows:
            page.extra["labels"] = None
            page.notes.append("no teacher labels: no accepted student step carries a teacher "
                              "label, so their accuracy cannot be measured. Label steps with "
                              "shadow mode (Cascade(shadow=0.1), or --shadow 0.1).")
        else:
            page.extra["labels"] = labels
            page.tables.append(labels)
        bins = [r["agreement"] for r in hist]
        page.charts.append(Chart("agreement_hist", "Agreement of student samples", {
            "data": [{"type": "bar", "name": "accepted (student acted)", "x": bins,
                      "y": [r["student_steps"] for r in hist]},
                     {"type": "bar", "name": "deferred (teacher acted)", "x": bins,
                      "y": [r["teacher_steps"] for r in hist]}],
            "layout": {"barmode": "stack", "xaxis": {"type": "category"},
                       "yaxis": {"title": {"text": "steps"}}},
        }))
        page.charts.append(Chart("rate_by_task", "Teacher-call rate by task type", {
            "data": [{"type": "bar", "x": [r["task_type"] for r in by_task],
                      "y": [r["teacher_call_rate"] for r in by_task]}],
            "layout": {"yaxis": RATE_AXIS},
        }))
        page.charts.append(Chart("rate_by_step", "Teacher-call rate by step index", {
            "data": [{"type": "scatter", "mode": "lines+markers", "cliponaxis": False,
                      "x": [r["step"] for r in by_idx],
                      "y": [r["teacher_call_rate"] for r in by_idx]}],
            "layout": {"xaxis": {"type": "category", "title": {"text": "step index"}},
                       "yaxis": RATE_AXIS},
        }))
        self._curve_charts(page, f, run_ids)
        return page

    def _curve_charts(self, page: Page, f: Filters, run_ids: Sequence[str] | None) -> None:
        """Teacher-call rate and cost per episode against episodes served, a line per run."""
        modes = {r["id"]: r["mode"] for r in self.runs()}
        ids = list(modes) if run_ids is None else list(run_ids)
        curves = learning_curves(self.log, ids, CURVE_WINDOW,
                                 where=self._episode_where(f, None) if f.narrows_episodes
                                 else None)
        thinned = {run: len(points) for run, points in curves.items()
                   if len(points) > CURVE_MAX_POINTS}
        if thinned:
            page.notes.append(
                f"Learning curves thinned to {CURVE_MAX_POINTS:,} evenly spaced points for "
                + ", ".join(f"{run} ({n:,} episodes)" for run, n in thinned.items())
                + f"; each point is still the mean of the last {CURVE_WINDOW} episodes.")
        shown = {run: downsample(points, CURVE_MAX_POINTS) for run, points in curves.items()}

        def lines(value: str, hover: str) -> list[dict[str, Any]]:
            return [{"type": "scatter", "mode": "lines", "name": f"{run} ({modes.get(run)})",
                     "cliponaxis": False,
                     "x": [p.served for p in points], "y": [getattr(p, value) for p in points],
                     "hovertemplate": "episode %{x}: " + hover}
                    for run, points in shown.items()]

        served = {"title": {"text": "episodes served"}}
        page.charts.append(Chart("teacher_rate_curve", "Teacher calls as the run goes", {
            "data": lines("mean_teacher_call_rate", "%{y:.1%}"),
            "layout": {"xaxis": served, "yaxis": {
                "title": {"text": f"teacher-call rate (mean of last {CURVE_WINDOW})"},
                **RATE_AXIS}},
        }))
        page.charts.append(Chart("cost_curve", "Cost per episode as the run goes", {
            "data": lines("mean_cost_usd", "$%{y:.5f}"),
            "layout": {"xaxis": served, "yaxis": {
                "title": {"text": f"USD per episode (mean of last {CURVE_WINDOW})"}}},
        }))

    def _label_accuracy(self, f: Filters) -> DataTable | None:
        if self.label_column is None:
            return None
        e = Episode.__table__
        # The label column is not in agentkd's schema, so describe the table by hand.
        s = sql_table("steps", sql_column("episode_id"), sql_column("actor"),
                      sql_column("final_action"), sql_column("student_correct"),
                      sql_column(self.label_column))
        label = s.c[self.label_column]
        where = and_(self._episode_where(f, self.selected_runs(f, modes=STUDENT_MODES)),
                     s.c.actor == "student", label.is_not(None))
        # agentkd's own label (shadow mode) was judged with the gate's action equivalence
        # when logged; another tool's label column can only be compared as text.
        agrees = (s.c.student_correct.is_(True) if self.label_column == "teacher_action"
                  else s.c.final_action == label)
        query = (select(e.c.run_id, func.count().label("labelled"),
                        func.sum(case((agrees, 1), else_=0)).label("agree"))
                 .select_from(s.join(e, e.c.id == s.c.episode_id)).where(where)
                 .group_by(e.c.run_id).order_by(e.c.run_id))
        with self.engine.connect() as conn:
            rows = [r._asdict() for r in conn.execute(query)]
        for row in rows:
            row["accuracy"] = _ratio(row["agree"], row["labelled"])
        return DataTable("label_accuracy", "Accuracy of accepted student steps",
                         [Col("run_id", "run"), Col("labelled", "labelled steps", "int"),
                          Col("agree", "match teacher", "int"), Col("accuracy", "accuracy", "pct")],
                         rows)

    def models(self, f: Filters) -> Page:
        self.refresh()
        t = calls_rollup
        where = self._rollup_where(t, f, self.selected_runs(f))
        rows = self._rollup_rows(
            select(t.c.model,
                   func.group_concat(t.c.role.distinct()).label("roles"),
                   func.sum(t.c.calls).label("calls"), func.sum(t.c.samples).label("samples"),
                   func.sum(t.c.prompt_tokens).label("prompt_tokens"),
                   func.sum(t.c.completion_tokens).label("completion_tokens"),
                   func.sum(t.c.cost_usd).label("spend"),
                   func.sum(t.c.latency_ms).label("latency_total"),
                   func.sum(t.c.errors).label("errors"))
            .where(where).group_by(t.c.model).order_by(literal_column("spend").desc()))
        total = sum(r["spend"] for r in rows)
        for row in rows:
            row["roles"] = ", ".join(sorted(set((row["roles"] or "").split(","))))
            row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
            row["share"] = _ratio(row["spend"], total)
            row["avg_latency_ms"] = _ratio(row.pop("latency_total"), row["calls"])
        page = Page("Models")
        page.tables.append(DataTable("models", "Calls, tokens and spend per model", [
            Col("model", "model"), Col("roles", "roles"), Col("calls", "calls", "int"),
            Col("samples", "samples", "int"), Col("prompt_tokens", "prompt tokens", "int"),
            Col("completion_tokens", "completion tokens", "int"), Col("tokens", "tokens", "int"),
            Col("spend", "spend", "usd"), Col("share", "share of spend", "pct"),
            Col("avg_latency_ms", "mean latency", "ms"), Col("errors", "errors", "int")], rows,
            note="A call is one request; with n samples in one request it counts once, "
                 "its samples n times."))
        page.kpis = [("models", "models", len(rows), "int"), ("spend", "spend", total, "usd"),
                     ("calls", "calls", sum(r["calls"] for r in rows), "int")]
        page.charts.append(Chart("spend_by_model", "Spend per model", {
            "data": [{"type": "bar", "x": [r["model"] for r in rows],
                      "y": [r["spend"] for r in rows]}],
            "layout": {"yaxis": {"title": {"text": "USD"}}},
        }))
        return page

    # -- episodes -------------------------------------------------------------------------

    EPISODE_COLUMNS = [
        Col("id", "episode", "link"), Col("run_id", "run", "run"), Col("mode", "mode"),
        Col("task_id", "task"), Col("task_type", "task type"), Col("status", "status"),
        Col("n_steps", "steps", "int"), Col("teacher_steps", "teacher steps", "int"),
        Col("cost_usd", "cost", "usd"), Col("started_at", "started"),
    ]

    def _episodes_query(self, f: Filters) -> Select[Any]:
        e, r = Episode.__table__, Run.__table__
        return (select(e.c.id, e.c.run_id, r.c.mode, e.c.task_id, e.c.task_type, e.c.status,
                       e.c.n_steps, e.c.teacher_steps, e.c.cost_usd, e.c.started_at)
                .select_from(e.join(r, r.c.id == e.c.run_id))
                .where(self._episode_where(f, self.selected_runs(f))))

    def episodes(self, f: Filters, page_no: int = 1, per_page: int = PAGE_SIZE) -> Page:
        e = Episode.__table__
        where = self._episode_where(f, self.selected_runs(f))
        page_no = max(1, page_no)
        with self.engine.connect() as conn:
            total = int(conn.scalar(select(func.count()).select_from(e).where(where)) or 0)
            rows = [r._asdict() for r in conn.execute(
                self._episodes_query(f).order_by(e.c.id.desc())
                .limit(per_page).offset((page_no - 1) * per_page))]
        page = Page("Episodes")
        page.tables.append(DataTable("episodes", "Episodes", self.EPISODE_COLUMNS, rows,
                                     note="Newest first; the CSV holds every episode in view."))
        page.kpis = [("episodes", "episodes in view", total, "int")]
        page.extra.update(page_no=page_no, per_page=per_page, total=total,
                          pages=max(1, -(-total // per_page)))
        return page

    def iter_episodes(self, f: Filters, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Every episode in view, by id, read in keyset batches (for the CSV download)."""
        e = Episode.__table__
        after = 0
        while True:
            with self.engine.connect() as conn:
                rows = [r._asdict() for r in conn.execute(
                    self._episodes_query(f).where(e.c.id > after).order_by(e.c.id).limit(batch))]
            yield from rows
            if len(rows) < batch:
                return
            after = rows[-1]["id"]

    def episode(self, episode_id: int) -> Page | None:
        e, r, s, c = Episode.__table__, Run.__table__, Step.__table__, LLMCall.__table__
        with self.engine.connect() as conn:
            head = conn.execute(select(e, r.c.mode, r.c.teacher, r.c.student)
                                .select_from(e.join(r, r.c.id == e.c.run_id))
                                .where(e.c.id == episode_id)).first()
            if head is None:
                return None
            steps = [x._asdict() for x in conn.execute(
                select(s).where(s.c.episode_id == episode_id).order_by(s.c.idx))]
            calls = [x._asdict() for x in conn.execute(
                select(c).where(c.c.episode_id == episode_id).order_by(c.c.id))]
        by_step: dict[int | None, list[dict[str, Any]]] = {}
        for call in calls:
            call["tokens"] = call["prompt_tokens"] + call["completion_tokens"]
            by_step.setdefault(call["step_id"], []).append(call)
        for step in steps:
            own = by_step.get(step["id"], [])
            step["calls"] = own
            step["prompt_tokens"] = sum(x["prompt_tokens"] for x in own)
            step["completion_tokens"] = sum(x["completion_tokens"] for x in own)
            step["call_latency_ms"] = sum(x["latency_ms"] for x in own)
            step["n_samples"] = len(step["samples"] or [])
            step["n_demos"] = len(step["demo_ids"] or [])
        episode = head._asdict()
        page = Page(f"Episode {episode_id}")
        page.extra.update(episode=episode, steps=steps, loose_calls=by_step.get(None, []))
        page.kpis = [("steps", "steps", episode["n_steps"], "int"),
                     ("teacher_steps", "teacher steps", episode["teacher_steps"], "int"),
                     ("cost", "cost", episode["cost_usd"], "usd"),
                     ("calls", "LLM calls", len(calls), "int")]
        page.tables.append(DataTable("episode_steps", "Steps", [
            Col("idx", "step", "int"), Col("verdict", "verdict"), Col("actor", "actor"),
            Col("agreement", "agreement", "float2"), Col("n_samples", "samples", "int"),
            Col("final_action", "final action"), Col("prompt_tokens", "prompt tokens", "int"),
            Col("completion_tokens", "completion tokens", "int"),
            Col("cost_usd", "cost", "usd"), Col("latency_ms", "latency", "ms"),
            Col("n_demos", "demos", "int")], steps))
        page.tables.append(DataTable("episode_calls", "LLM calls", [
            Col("id", "call", "int"), Col("step_id", "step id", "int"), Col("role", "role"),
            Col("model", "model"), Col("n", "n", "int"),
            Col("prompt_tokens", "prompt tokens", "int"),
            Col("completion_tokens", "completion tokens", "int"), Col("cost_usd", "cost", "usd"),
            Col("latency_ms", "latency", "ms"), Col("error", "error")], calls))
        return page
