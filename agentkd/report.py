"""Run summaries from the log: accuracy, cost, teacher-call rate, relative cost, break-even.

Aggregation happens in SQL. The teacher baseline for a run is the cost per episode of the
`teacher`-mode runs with the same teacher model in the same log (the `collect` runs when there
are none: they are teacher-only too, but usually on other tasks);
the demo-collection cost is the total spend of its collect runs. Break-even episodes =
collection cost / (teacher cost per episode − this run's cost per episode).
Accepted-step accuracy is the share of the student's accepted steps whose action the teacher
confirmed, over the steps shadow mode labelled (`Cascade.shadow`); None without labels.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel
from rich import box
from rich.table import Table
from sqlalchemy import case, func, select

from agentkd.log import Episode, Run, Step, TrajectoryLog

FINISHED = ("success", "failure", "done", "error", "budget")


class RunSummary(BaseModel):
    """One row of `agentkd report`."""

    run_id: str
    mode: str
    teacher: str
    student: str | None
    label: str | None
    episodes: int
    success_rate: float | None
    steps_per_episode: float | None
    teacher_call_rate: float | None
    cost_per_episode: float | None
    total_cost: float
    relative_cost: float | None
    break_even_episodes: float | None
    labelled_accepted: int = 0
    """Accepted student steps with a shadow label."""
    accepted_accuracy: float | None = None


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

    teacher_cpe: dict[tuple[str, str], list[tuple[int, float]]] = {}
    collect_cost: dict[str, float] = {}
    for _run, mode, teacher, _, _, n, _, _, _, cost, total in rows:
        if mode in ("teacher", "collect") and n:
            teacher_cpe.setdefault((mode, teacher), []).append((int(n), float(cost or 0.0)))
        if mode == "collect":
            collect_cost[teacher] = collect_cost.get(teacher, 0.0) + float(total)

    summaries = []
    for run_id, mode, teacher, student, label, n, wins, steps, t_steps, cost, total in rows:
        if run_ids is not None and run_id not in run_ids:
            continue
        n = int(n or 0)
        cpe = float(cost) / n if n else None
        baseline_runs = (teacher_cpe.get(("teacher", teacher))
                         or teacher_cpe.get(("collect", teacher), []))
        baseline_n = sum(k for k, _ in baseline_runs)
        baseline = sum(c for _, c in baseline_runs) / baseline_n if baseline_n else None
        relative = cpe / baseline if cpe is not None and baseline else None
        break_even = None
        if mode not in ("teacher", "collect") and cpe is not None and baseline is not None:
            saving = baseline - cpe
            if saving > 0:
                break_even = collect_cost.get(teacher, 0.0) / saving
        n_labelled, n_right = labels.get(run_id, (0, 0))
        summaries.append(RunSummary(
            run_id=run_id, mode=mode, teacher=teacher, student=student, label=label, episodes=n,
            success_rate=int(wins or 0) / n if n else None,
            steps_per_episode=int(steps or 0) / n if n else None,
            teacher_call_rate=int(t_steps or 0) / int(steps) if steps else None,
            cost_per_episode=cpe, total_cost=float(total), relative_cost=relative,
            break_even_episodes=break_even, labelled_accepted=n_labelled,
            accepted_accuracy=n_right / n_labelled if n_labelled else None,
        ))
    return summaries



def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


WIDE_TABLE = 150
"""Terminal columns the full report table needs; narrower terminals get the compact one."""


def summary_table(summaries: Sequence[RunSummary], title: str = "agentkd runs",
                  width: int | None = None) -> Table:
    """The report as a rich table.

    Given a terminal `width` below `WIDE_TABLE`, the table drops the run id, teacher and
    student columns (the caption names the models instead) and the accepted-accuracy column when
    no run has labels, so it stays readable on an 80-column terminal.
    """
    compact = width is not None and width < WIDE_TABLE
    labelled = any(r.accepted_accuracy is not None for r in summaries)
    columns = ["mode", "eps", "success", "steps/ep", "teacher%"]
    columns += ["accepted"] if labelled else []
    columns += ["$/ep", "rel cost", "break-even"]
    if not compact:
        columns = ["run", "mode", "teacher", "student", "episodes", "success", "steps/ep",
                   "teacher-call rate", "accepted acc. (labelled)", "cost/ep (USD)",
                   "relative cost", "break-even eps"]
    table = Table(title=title, box=box.SIMPLE_HEAD if compact else box.HEAVY_HEAD,
                  pad_edge=not compact, padding=(0, 1, 0, 0) if compact else (0, 1))
    for column in columns:
        table.add_column(column, no_wrap=compact,
                         justify="left" if column in ("run", "mode", "teacher",
                                                      "student") else "right")
    for r in summaries:
        accepted = _fmt(r.accepted_accuracy, ".1%") + (
            f" ({r.labelled_accepted})" if r.labelled_accepted else "")
        numbers = [_fmt(r.success_rate, ".2f"), _fmt(r.steps_per_episode, ".1f"),
                   _fmt(r.teacher_call_rate, ".1%")]
        money = [_fmt(r.cost_per_episode, ".5f"),
                 _fmt(r.relative_cost, ".2f") + ("×" if r.relative_cost is not None else ""),
                 _fmt(r.break_even_episodes, ".0f")]
        if compact:
            table.add_row(r.mode, str(r.episodes), *numbers,
                          *([accepted] if labelled else []), *money)
        else:
            teacher = r.teacher + (f" ({r.label})" if r.label else "")
            table.add_row(r.run_id, r.mode, teacher, r.student or "–", str(r.episodes),
                          *numbers, accepted, *money)
    if compact:
        teachers = sorted({r.teacher + (f" ({r.label})" if r.label else "") for r in summaries})
        students = sorted({r.student for r in summaries if r.student})
        table.caption = (f"teacher% = teacher-call rate; teacher: {', '.join(teachers)}; student: "
                         f"{', '.join(students) or '–'}; runs: "
                         f"{', '.join(r.run_id for r in summaries)}")
    return table
