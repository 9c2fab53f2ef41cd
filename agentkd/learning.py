"""A run's learning curve: does the teacher get called less as the run goes?

With ``grow_demos`` every won episode adds the teacher's steps to the store, so later
episodes should retrieve better demos and defer less. This module owns the per-episode series
(in the order episodes were served) and its running means, read from the log in one query,
the PNG that `benchmarks/cascade.py` writes from them, and the thinning the dashboard's cascade
page applies to long runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import ColumnElement, select

from agentkd.log import Episode, TrajectoryLog
from agentkd.report import FINISHED

__all__ = ["CurvePoint", "downsample", "learning_curve", "learning_curves", "plot_learning_curves"]


@dataclass(frozen=True)
class CurvePoint:
    """One finished episode of a run, numbered in the order it was served (from 1)."""

    served: int
    task_id: str
    success: bool
    steps: int
    teacher_steps: int
    cost_usd: float
    teacher_call_rate: float  # this episode's teacher-served share of steps
    mean_teacher_call_rate: float  # over the last `window` episodes, this one included
    mean_cost_usd: float


def learning_curve(log: TrajectoryLog, run_id: str, window: int = 10) -> list[CurvePoint]:
    """The finished episodes of `run_id` in serving order, with running means over `window`."""
    return learning_curves(log, [run_id], window).get(run_id, [])


def learning_curves(log: TrajectoryLog, run_ids: Sequence[str], window: int = 10, *,
                    where: ColumnElement[bool] | None = None) -> dict[str, list[CurvePoint]]:
    """`learning_curve` of several runs in one query (runs without finished episodes left out).

    `where` narrows the episodes read (the dashboard's task-type and date filters); episodes
    are then numbered and averaged within what it keeps.
    """
    if window < 1:
        raise ValueError("window must be >= 1")
    if not run_ids:
        return {}
    query = (select(Episode.run_id, Episode.task_id, Episode.success, Episode.n_steps,
                    Episode.teacher_steps, Episode.cost_usd)
             .where(Episode.run_id.in_(list(run_ids)), Episode.status.in_(FINISHED)))
    if where is not None:
        query = query.where(where)
    with log.session() as s:
        rows = s.execute(query.order_by(Episode.run_id, Episode.finished_at, Episode.id)).all()
    curves: dict[str, list[CurvePoint]] = {}
    for run_id, task_id, success, steps, teacher_steps, cost in rows:
        points = curves.setdefault(run_id, [])
        recent = points[-(window - 1):] if window > 1 and points else []
        rate = teacher_steps / steps if steps else 0.0
        rates = [p.teacher_call_rate for p in recent] + [rate]
        costs = [p.cost_usd for p in recent] + [float(cost)]
        points.append(CurvePoint(
            served=len(points) + 1, task_id=task_id, success=bool(success), steps=int(steps),
            teacher_steps=int(teacher_steps), cost_usd=float(cost), teacher_call_rate=rate,
            mean_teacher_call_rate=sum(rates) / len(rates),
            mean_cost_usd=sum(costs) / len(costs)))
    return {run_id: curves[run_id] for run_id in run_ids if run_id in curves}


def downsample(points: Sequence[CurvePoint], max_points: int) -> list[CurvePoint]:
    """At most `max_points` of `points`, evenly spaced by serving order, first and last kept.

    The running means are those computed over every episode; only the points shown thin out.
    """
    if max_points < 2:
        raise ValueError("max_points must be >= 2")
    n = len(points)
    if n <= max_points:
        return list(points)
    keep = sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})
    return [points[i] for i in keep]


def plot_learning_curves(curves: dict[str, Sequence[CurvePoint]], out: Path, *,
                         title: str, window: int = 10) -> Path:
    """Teacher-call rate and cost per episode against episodes served, one line per run."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write the file only
    import matplotlib.pyplot as plt

    fig, (rate_ax, cost_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for label, points in curves.items():
        served = [p.served for p in points]
        rate_ax.plot(served, [p.mean_teacher_call_rate for p in points], label=label)
        cost_ax.plot(served, [p.mean_cost_usd for p in points], label=label)
    rate_ax.set(xlabel="episodes served", ylabel=f"teacher-call rate (mean of last {window})",
                ylim=(0, 1))
    cost_ax.set(xlabel="episodes served", ylabel=f"$ per episode (mean of last {window})")
    for ax in (rate_ax, cost_ax):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
