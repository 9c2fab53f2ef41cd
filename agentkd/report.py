"""Run summaries from the log: success with its interval, cost, teacher-call rate, and the
saving against the teacher, claimed only where the run succeeds as often as the teacher.

Aggregation happens in SQL. Success comes with a 95% Wilson interval (`wilson_interval`).

The teacher baseline of a run is matched by task: the finished episodes of the `teacher`-mode
runs with the same teacher model on the task ids this run finished (the `collect` runs on
those tasks when no teacher run played them: they are teacher-only too). Both sides are
counted on the shared task ids only, so a run is never compared with the teacher on other
games. Where the benchmark recorded each episode's step cap, the teacher is judged at the run's
cap: a teacher win in more steps than the run had counts as a loss, its cost is what its first
steps up to the cap cost, and teacher episodes played with a lower cap are left out (see
`_comparisons`). Relative cost and break-even are given only where the run's success on
those tasks is within or above the baseline's 95% interval; otherwise they are None and
`saving_withheld` says why ("below teacher success", no baseline on these tasks, no saving
per episode).

Break-even episodes = demo-collection cost / (teacher cost per episode − this run's cost per
episode), both on the shared tasks. The collection cost is that of the store the run read
(`_collection_cost`): the spend of the teacher's collect runs that wrote it; nothing for a run
that read no store or grew its own from empty (a cold start pays nothing up front, so its
break-even is 0); every collect run of the teacher where the log cannot tell (a run logged
without its store, or a store built from another log).
Accepted-step accuracy is the share of the student's accepted steps whose action the teacher
confirmed, over the steps shadow mode labelled (`Cascade.shadow`); None without labels.

Prompt caching, per run and per model (`CacheFigures`, over the LLM calls of the run's
episodes): the cache hit share is cached / prompt tokens; the cost without cache credit bills
every prompt token at the input price, and the saving is that minus what was billed (negative
when cache writes cost more than the reads saved). Calls logged before these were recorded
count as uncached. Where the provider stated its own cost, its total and the calls whose
stated cost disagrees with ours (`agentkd.costs.cost_mismatch`) are given too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from rich import box
from rich.table import Table
from sqlalchemy import ColumnElement, case, func, select, true
from sqlalchemy.orm import QueryableAttribute

from agentkd.costs import MISMATCH_ABSOLUTE, MISMATCH_RELATIVE
from agentkd.errors import InputError
from agentkd.log import Episode, LLMCall, Run, Step, TrajectoryLog

FINISHED = ("success", "failure", "done", "error", "budget")
BASELINE_MODES = ("teacher", "collect")
"""Teacher-only modes, in the order a baseline is looked for."""
Z_95 = 1.959963984540054
"""Standard normal quantile of a two-sided 95% interval."""

BELOW_TEACHER = "below teacher success"
NO_BASELINE = "no teacher-only episodes on these tasks"
NO_SAVING = "no saving: costs at least the teacher's per episode"
FREE_TEACHER = "the teacher-only episodes cost nothing (is the teacher priced?)"
IS_BASELINE = "teacher-only run"


def wilson_interval(wins: int, n: int, z: float = Z_95) -> tuple[float, float] | None:
    """Wilson score interval of a success rate (None without episodes).

    Unlike the normal approximation it stays inside [0, 1] and does not collapse to a point at
    0/n or n/n, which is what small ALFWorld samples (2–24 games) give.
    """
    if n <= 0:
        return None
    p = wins / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return max(0.0, centre - half), min(1.0, centre + half)


class CacheFigures(BaseModel):
    """Prompt-cache use and what it saved, over a set of LLM calls."""

    calls: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens read from the provider's prompt cache (or llama.cpp's KV cache)."""
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cache_hit_share: float | None = None
    """cached / prompt tokens (None without prompt tokens)."""
    cost: float = 0.0
    """What was billed, with the cache credit."""
    uncached_cost: float = 0.0
    """The same calls with every prompt token at the input price."""
    cache_saving: float = 0.0
    """uncached_cost - cost."""
    provider_cost: float | None = None
    """Sum of the costs the provider stated (None: it stated none)."""
    provider_costed_calls: int = 0
    cost_mismatches: int = 0
    """Calls whose provider-stated cost disagrees with ours."""


class ModelCacheFigures(CacheFigures):
    model: str


class RunSummary(BaseModel):
    """One row of `agentkd report`."""

    run_id: str
    mode: str
    teacher: str
    student: str | None
    label: str | None
    episodes: int
    wins: int = 0
    success_rate: float | None
    success_low: float | None = None
    success_high: float | None = None
    """95% Wilson interval of `success_rate`."""
    steps_per_episode: float | None
    teacher_call_rate: float | None
    cost_per_episode: float | None
    total_cost: float
    compared_episodes: int = 0
    """This run's episodes on tasks the teacher baseline also played."""
    baseline_episodes: int = 0
    """Teacher-only episodes on those tasks."""
    baseline_wins: int = 0
    baseline_success_rate: float | None = None
    baseline_success_low: float | None = None
    baseline_success_high: float | None = None
    baseline_cost_per_episode: float | None = None
    relative_cost: float | None
    break_even_episodes: float | None
    saving_withheld: str | None = None
    """Why `relative_cost` or `break_even_episodes` is None (None when both are given)."""
    labelled_accepted: int = 0
    """Accepted student steps with a shadow label."""
    accepted_accuracy: float | None = None
    cache: CacheFigures = CacheFigures()
    """Prompt caching over the run's calls."""
    cache_by_model: list[ModelCacheFigures] = []


class _Comparison(BaseModel):
    """A run against its teacher baseline on their shared task ids."""

    episodes: int = 0
    wins: int = 0
    cost: float = 0.0
    baseline_episodes: int = 0
    baseline_wins: int = 0
    baseline_cost: float = 0.0


def _step_cap(episode: type[Episode]) -> ColumnElement[int | None]:
    """The episode's step cap, as the benchmark recorded it in `info` (None when unknown:
    an episode of a decorated loop, or of a log written before caps were recorded)."""
    return episode.info["max_steps"].as_integer()


def _comparisons(log: TrajectoryLog, baseline_run: str | None = None, run: str | None = None
                 ) -> dict[tuple[str, str], _Comparison]:
    """(run id, baseline mode) → the run and that mode's teacher episodes on shared tasks.

    The run's side is grouped per task id and step cap, the baseline's side counted per
    episode within each such group, so each side counts every one of its episodes on a
    shared task exactly once. A teacher episode is judged at the run's step cap `c`: it is
    a win only if it won within `c` steps, and it costs what its first `c` steps cost (a
    capped teacher takes the same first steps). A teacher episode played with a lower cap
    than the run's is left out: it might have won with the steps it was not given. With
    `baseline_run`, only that run's episodes are the baseline; with `run`, only that run is
    compared.
    """
    finished = Episode.status.in_(FINISHED)
    won = func.sum(case((Episode.success.is_(True), 1), else_=0))
    # Grouped by the label: PostgreSQL does not see two renderings of the JSON lookup (each
    # with its own bound key) as one expression.
    step_cap = _step_cap(Episode).label("cap")
    played = (
        select(Episode.run_id, Run.teacher, Episode.task_id, step_cap,
               func.count(Episode.id).label("n"), won.label("wins"),
               func.sum(Episode.cost_usd).label("cost"))
        .select_from(Episode).join(Run, Run.id == Episode.run_id)
        .where(finished, true() if run is None else Episode.run_id == run)
        .group_by(Episode.run_id, Run.teacher, Episode.task_id, step_cap)
        .subquery()
    )
    # The teacher's episodes in a subquery of their own, not an alias of Episode: the
    # dashboard narrows every Episode in a query by its filters, which an alias would escape.
    teacher_cap = _step_cap(Episode).label("cap")
    teacher = (
        select(Episode.id, Run.teacher, Run.mode, Episode.task_id, Episode.success,
               Episode.n_steps, Episode.cost_usd, teacher_cap)
        .select_from(Episode).join(Run, Run.id == Episode.run_id)
        .where(finished, Run.mode.in_(BASELINE_MODES),
               true() if baseline_run is None else Episode.run_id == baseline_run)
        .subquery()
    )
    cap, t = played.c.cap, teacher.c
    within_cap = cap.is_(None) | (t.n_steps <= cap)
    first_steps_cost = (select(func.coalesce(func.sum(Step.cost_usd), 0.0))
                        .where(Step.episode_id == t.id, Step.idx < cap)
                        .scalar_subquery())
    baseline = (
        select(played.c.run_id, t.mode, played.c.n, played.c.wins, played.c.cost,
               func.count(t.id).label("bn"),
               func.sum(case((t.success.is_(True) & within_cap, 1), else_=0)).label("bw"),
               func.sum(case((within_cap, t.cost_usd), else_=first_steps_cost)).label("bc"))
        .select_from(played)
        .join(teacher, (t.task_id == played.c.task_id) & (t.teacher == played.c.teacher))
        .where(cap.is_(None) | t.cap.is_(None) | (t.cap >= cap))
        .group_by(played.c.run_id, t.mode, played.c.task_id, cap, played.c.n,
                  played.c.wins, played.c.cost)
        .subquery()
    )
    query = (
        select(baseline.c.run_id, baseline.c.mode, func.sum(baseline.c.n),
               func.sum(baseline.c.wins), func.sum(baseline.c.cost), func.sum(baseline.c.bn),
               func.sum(baseline.c.bw), func.sum(baseline.c.bc))
        .group_by(baseline.c.run_id, baseline.c.mode)
    )
    with log.session() as s:
        return {(run, mode): _Comparison(
                    episodes=int(n), wins=int(w or 0), cost=float(c or 0.0),
                    baseline_episodes=int(bn), baseline_wins=int(bw or 0),
                    baseline_cost=float(bc or 0.0))
                for run, mode, n, w, c, bn, bw, bc in s.execute(query)}


def _versus_teacher(mode: str, comparison: _Comparison | None,
                    collection_cost: float) -> dict[str, Any]:
    """The baseline fields of a RunSummary: the teacher on the shared tasks, and the saving
    where the run's success there is not below the teacher's interval."""
    if comparison is None:
        return {"relative_cost": None, "break_even_episodes": None,
                "saving_withheld": NO_BASELINE}
    interval = wilson_interval(comparison.baseline_wins, comparison.baseline_episodes)
    assert interval is not None  # a joined task has at least one baseline episode
    run_cpe = comparison.cost / comparison.episodes
    baseline_cpe = comparison.baseline_cost / comparison.baseline_episodes
    fields: dict[str, Any] = {
        "compared_episodes": comparison.episodes,
        "baseline_episodes": comparison.baseline_episodes,
        "baseline_wins": comparison.baseline_wins,
        "baseline_success_rate": comparison.baseline_wins / comparison.baseline_episodes,
        "baseline_success_low": interval[0], "baseline_success_high": interval[1],
        "baseline_cost_per_episode": baseline_cpe,
        "relative_cost": None, "break_even_episodes": None, "saving_withheld": None,
    }
    if comparison.wins / comparison.episodes < interval[0]:
        fields["saving_withheld"] = BELOW_TEACHER
        return fields
    if not baseline_cpe:
        fields["saving_withheld"] = FREE_TEACHER
        return fields
    fields["relative_cost"] = run_cpe / baseline_cpe
    if mode in BASELINE_MODES:
        fields["saving_withheld"] = IS_BASELINE
    elif baseline_cpe - run_cpe > 0:
        fields["break_even_episodes"] = collection_cost / (baseline_cpe - run_cpe)
    else:
        fields["saving_withheld"] = NO_SAVING
    return fields


def versus_baseline(log: TrajectoryLog, run_id: str, baseline_run: str,
                    one_time_usd: float) -> dict[str, Any]:
    """`run_id` against one teacher-only run on their shared tasks, by the rule of every
    summary (no saving below the teacher's interval, the teacher judged at the run's step
    cap), with `one_time_usd` (demo collection, training) as what the saving pays off.

    The RunSummary baseline fields, plus the run's `success_rate`, `cost_per_episode` and
    `saving_per_episode` on those tasks (the saving None where it is withheld).
    """
    with log.session() as s:
        mode = s.scalar(select(Run.mode).where(Run.id == run_id))
    if mode is None:
        raise InputError(f"no run {run_id!r} in the log")
    comparison = next(iter(_comparisons(log, baseline_run, run_id).values()), None)
    fields = _versus_teacher(mode, comparison, one_time_usd)
    fields["success_rate"] = comparison.wins / comparison.episodes if comparison else None
    fields["cost_per_episode"] = comparison.cost / comparison.episodes if comparison else None
    fields["saving_per_episode"] = (
        fields["baseline_cost_per_episode"] - fields["cost_per_episode"]
        if fields["break_even_episodes"] is not None else None)
    fields["one_time_usd"] = one_time_usd
    return fields


def _mismatched(stated: QueryableAttribute[Any], ours: QueryableAttribute[Any]
                ) -> ColumnElement[bool]:
    """SQL twin of `agentkd.costs.cost_mismatch` (portable: no GREATEST in SQLite)."""
    larger = case((func.abs(stated) > func.abs(ours), func.abs(stated)), else_=func.abs(ours))
    tolerance = case((larger * MISMATCH_RELATIVE > MISMATCH_ABSOLUTE,
                      larger * MISMATCH_RELATIVE), else_=MISMATCH_ABSOLUTE)
    return func.abs(stated - ours) > tolerance


def cache_figures(log: TrajectoryLog) -> dict[str, list[ModelCacheFigures]]:
    """Run id → its prompt-cache figures per model, over the calls of its episodes."""
    c = LLMCall
    stated = c.provider_cost_usd.is_not(None)
    query = (
        select(Episode.run_id, c.model, func.count(c.id), func.sum(c.prompt_tokens),
               func.sum(func.coalesce(c.cached_tokens, 0)),
               func.sum(func.coalesce(c.cache_write_tokens, 0)),
               func.sum(func.coalesce(c.reasoning_tokens, 0)), func.sum(c.cost_usd),
               func.sum(func.coalesce(c.uncached_cost_usd, c.cost_usd)),
               func.sum(c.provider_cost_usd), func.sum(case((stated, 1), else_=0)),
               func.sum(case((stated & _mismatched(c.provider_cost_usd, c.cost_usd), 1),
                             else_=0)))
        .select_from(c).join(Episode, Episode.id == c.episode_id)
        .group_by(Episode.run_id, c.model).order_by(Episode.run_id, c.model))
    out: dict[str, list[ModelCacheFigures]] = {}
    with log.session() as s:
        for run, model, calls, prompt, cached, written, reasoning, cost, uncached, \
                provider, costed, mismatches in s.execute(query):
            prompt, cost, uncached = int(prompt or 0), float(cost or 0.0), float(uncached or 0.0)
            out.setdefault(run, []).append(ModelCacheFigures(
                model=model, calls=int(calls), prompt_tokens=prompt,
                cached_tokens=int(cached or 0), cache_write_tokens=int(written or 0),
                reasoning_tokens=int(reasoning or 0),
                cache_hit_share=int(cached or 0) / prompt if prompt else None,
                cost=cost, uncached_cost=uncached, cache_saving=uncached - cost,
                provider_cost=None if provider is None else float(provider),
                provider_costed_calls=int(costed or 0), cost_mismatches=int(mismatches or 0)))
    return out


def total_cache(parts: Sequence[CacheFigures]) -> CacheFigures:
    """The figures of several sets of calls together."""
    prompt = sum(p.prompt_tokens for p in parts)
    cached = sum(p.cached_tokens for p in parts)
    stated = [p.provider_cost for p in parts if p.provider_cost is not None]
    cost, uncached = sum(p.cost for p in parts), sum(p.uncached_cost for p in parts)
    return CacheFigures(
        calls=sum(p.calls for p in parts), prompt_tokens=prompt, cached_tokens=cached,
        cache_write_tokens=sum(p.cache_write_tokens for p in parts),
        reasoning_tokens=sum(p.reasoning_tokens for p in parts),
        cache_hit_share=cached / prompt if prompt else None, cost=cost,
        uncached_cost=uncached, cache_saving=uncached - cost,
        provider_cost=sum(stated) if stated else None,
        provider_costed_calls=sum(p.provider_costed_calls for p in parts),
        cost_mismatches=sum(p.cost_mismatches for p in parts))


@dataclass(frozen=True)
class _Collect:
    """A collect run: its teacher, the store it wrote (None where not logged), its spend."""

    teacher: str
    demos: str | None
    cost: float


def _collection_cost(config: dict[str, Any], teacher: str, collects: list[_Collect]) -> float:
    """What the demos a run read cost to collect: the spend of `teacher`'s collect runs that
    wrote its store. Nothing for a run that read no store, or that grew its own from empty;
    every collect run of the teacher where the log cannot tell which store it read (a run
    logged without its config) or who wrote it (a store built from another log)."""
    own = [c for c in collects if c.teacher == teacher]
    if "demos" not in config:
        return sum(c.cost for c in own)
    store = config["demos"]
    if store is None:
        return 0.0
    writers = [c for c in own if c.demos == store]
    if writers or config.get("grow_demos"):
        return sum(c.cost for c in writers)
    return sum(c.cost for c in own)


def run_summaries(log: TrajectoryLog, run_ids: Sequence[str] | None = None) -> list[RunSummary]:
    finished = Episode.status.in_(FINISHED)
    query = (
        select(
            Run.id, Run.mode, Run.teacher, Run.student, Run.label,
            func.count(Episode.id).filter(finished),
            func.sum(case((Episode.success.is_(True), 1), else_=0)).filter(finished),
            func.sum(Episode.n_steps).filter(finished),
            func.sum(Episode.teacher_steps).filter(finished),
            func.sum(Episode.cost_usd).filter(finished),
            func.coalesce(func.sum(Episode.cost_usd), 0.0),
        )
        .select_from(Run)
        .join(Episode, Episode.run_id == Run.id, isouter=True)
        .group_by(Run.id, Run.mode, Run.teacher, Run.student, Run.label)
        .order_by(func.min(Run.created_at), Run.id)
    )
    labelled = (
        select(Episode.run_id, func.count(Step.id),
               func.sum(case((Step.student_correct.is_(True), 1), else_=0)))
        .select_from(Step).join(Episode, Episode.id == Step.episode_id)
        .where(Episode.status.in_(FINISHED), Step.actor == "student",
               Step.student_correct.is_not(None))
        .group_by(Episode.run_id)
    )
    with log.session() as s:
        rows = s.execute(query).all()
        labels = {run: (int(n), int(right or 0)) for run, n, right in s.execute(labelled)}
    comparisons = _comparisons(log)
    caches = cache_figures(log)

    with log.session() as s:
        configs: dict[str, dict[str, Any]] = dict(
            s.execute(select(Run.id, Run.config)).tuples().all())
    collects = [_Collect(teacher, (configs.get(run) or {}).get("demos"), float(total))
                for run, mode, teacher, *_, total in rows if mode == "collect"]

    summaries = []
    for run_id, mode, teacher, student, label, n, wins, steps, t_steps, cost, total in rows:
        if run_ids is not None and run_id not in run_ids:
            continue
        n, wins = int(n or 0), int(wins or 0)
        interval = wilson_interval(wins, n)
        comparison = next((comparisons[run_id, m] for m in BASELINE_MODES
                           if (run_id, m) in comparisons), None)
        n_labelled, n_right = labels.get(run_id, (0, 0))
        summaries.append(RunSummary(
            run_id=run_id, mode=mode, teacher=teacher, student=student, label=label, episodes=n,
            wins=wins, success_rate=wins / n if n else None,
            success_low=interval[0] if interval else None,
            success_high=interval[1] if interval else None,
            steps_per_episode=int(steps or 0) / n if n else None,
            teacher_call_rate=int(t_steps or 0) / int(steps) if steps else None,
            cost_per_episode=float(cost) / n if n else None, total_cost=float(total),
            labelled_accepted=n_labelled,
            accepted_accuracy=n_right / n_labelled if n_labelled else None,
            cache=total_cache(caches.get(run_id, [])), cache_by_model=caches.get(run_id, []),
            **_versus_teacher(mode, comparison,
                              _collection_cost(configs.get(run_id) or {}, teacher, collects)),
        ))
    return summaries


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def success_cell(wins: int, n: int, low: float | None, high: float | None) -> str:
    """'1/2 (9–91%)': games won of played, then the 95% interval of the rate."""
    if not n or low is None or high is None:
        return "–"
    return f"{wins}/{n} ({low:.0%}–{high:.0%})".replace("%–", "–")


def _baseline_cell(r: RunSummary) -> str:
    return success_cell(r.baseline_wins, r.baseline_episodes, r.baseline_success_low,
                        r.baseline_success_high)


def _saving_cells(r: RunSummary) -> tuple[str, str]:
    """(relative cost, break-even) cells: the numbers, or why they are withheld."""
    if r.relative_cost is None:
        return r.saving_withheld or "–", "–"
    relative = f"{r.relative_cost:.2f}×"
    if r.break_even_episodes is not None:
        return relative, f"{r.break_even_episodes:.0f}"
    return relative, "no saving" if r.saving_withheld == NO_SAVING else "–"


def teacher_name(r: RunSummary) -> str:
    """The teacher model with its label, e.g. 'alfworld/expert (priced oracle teacher)'."""
    return r.teacher + (f" ({r.label})" if r.label else "")


WIDE_TABLE = 200
"""Terminal columns the full report table needs; narrower terminals get the compact one."""


def summary_table(summaries: Sequence[RunSummary], title: str = "agentkd runs",
                  width: int | None = None) -> Table:
    """The report as a rich table.

    Given a terminal `width` below `WIDE_TABLE`, the table drops the run id, student and
    teacher-success columns (the caption names the models instead), merges relative cost and
    break-even into one "vs teacher" column, and drops the accepted-accuracy column when no
    run has labels, so it stays readable on an 80-column terminal. Both layouts name the
    teacher in the title. When some run used a prompt cache, both end with its hit share and
    the saving, and the wide one with the spend with and without the cache credit.
    """
    compact = width is not None and width < WIDE_TABLE
    labelled = any(r.accepted_accuracy is not None for r in summaries)
    cached = any(r.cache.cached_tokens or r.cache.cache_write_tokens for r in summaries)
    teachers = sorted({teacher_name(r) for r in summaries})
    if teachers:
        title += f" · teacher: {', '.join(teachers)}"
    if compact:
        columns = ["mode", "success (95%)", "steps/ep", "teacher%"]
        columns += ["accepted"] if labelled else []
        columns += ["$/ep", "vs teacher"]
    else:
        columns = ["run", "mode", "teacher", "student", "success (95% CI)",
                   "teacher success", "steps/ep", "teacher calls", "accepted acc.", "$/ep",
                   "relative cost", "break-even eps"]
    if cached:
        columns += ["cache hit", "cache saving"] if compact else \
            ["cache hit", "spend", "spend w/o cache", "cache saving"]
    table = Table(title=title, box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
                  pad_edge=not compact, padding=(0, 1, 0, 0) if compact else (0, 1))
    for column in columns:
        text = column in ("run", "mode", "teacher", "student", "relative cost", "vs teacher")
        # Numbers and run ids never wrap; the models and the reason a saving is withheld may.
        wraps = column in ("teacher", "student", "relative cost", "vs teacher")
        table.add_column(column, no_wrap=not wraps, overflow="fold" if wraps else "ellipsis",
                         justify="left" if text else "right")
    for r in summaries:
        accepted = _fmt(r.accepted_accuracy, ".1%") + (
            f" ({r.labelled_accepted})" if r.labelled_accepted else "")
        success = success_cell(r.wins, r.episodes, r.success_low, r.success_high)
        numbers = [_fmt(r.steps_per_episode, ".1f"), _fmt(r.teacher_call_rate, ".1%")]
        relative, break_even = _saving_cells(r)
        cache = [_fmt(r.cache.cache_hit_share, ".1%")]
        cache += [] if compact else [_fmt(r.cache.cost, ".5f"), _fmt(r.cache.uncached_cost, ".5f")]
        cache = [*cache, _fmt(r.cache.cache_saving, ".5f")] if cached else []
        if compact:
            versus = ", ".join(cell for cell in (relative, break_even) if cell != "–")
            table.add_row(r.mode, success, *numbers, *([accepted] if labelled else []),
                          _fmt(r.cost_per_episode, ".5f"), versus, *cache)
        else:
            table.add_row(r.run_id, r.mode, teacher_name(r), r.student or "–", success,
                          _baseline_cell(r), *numbers, accepted,
                          _fmt(r.cost_per_episode, ".5f"), relative, break_even, *cache)
    if compact:
        students = sorted({r.student for r in summaries if r.student})
        table.caption = (f"success: episodes won (95% Wilson interval); vs teacher: relative "
                         f"cost, break-even episodes, against the teacher-only runs on the "
                         f"same tasks and withheld when success is below the teacher's "
                         f"interval; teacher% = teacher-call rate; student: "
                         f"{', '.join(students) or '–'}; runs: "
                         f"{', '.join(r.run_id for r in summaries)}")
    return table
