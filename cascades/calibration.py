"""Threshold calibration: the acceptance rule that is right often enough, at the lowest cost.

Shadow steps (`Cascade.shadow`) are drawn at random whoever acted and carry the teacher's
action, so they are an unbiased labelled sample of the run's steps. For each variant (the
run's temperature, and every sample count N' up to the logged N: the first N' samples of a
step are a sample of size N'), each signal and each threshold, calibration computes over
those steps:

- the accepted share, and the accepted-step accuracy (the share of accepted steps whose
  student majority action is the teacher's), with a bootstrap interval over steps;
- the expected cost per step: the student's N' samples on every step plus the teacher on
  every step the rule does not accept (teacher-call rate = 1 − accepted share).

The chosen rule is the cheapest whose accuracy's lower bound (one-sided, at `confidence`)
reaches the target. A rule is eligible only when it accepts at least `min_accepted(target,
confidence)` labelled steps: with fewer, even a flawless record cannot show the target at
that confidence (exact binomial bound), and a bootstrap over a handful of steps would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from sqlalchemy import select

from agentkd.cascades.signals import step_signals
from agentkd.config import SIGNALS, AcceptanceRule, Cascade
from agentkd.costs import call_cost
from agentkd.errors import AgentKDError, InputError
from agentkd.log import Episode, LLMCall, Run, Step, TrajectoryLog

_MAX_THRESHOLDS = 200  # per signal: quantiles of a continuous signal (logprobs) beyond this
_TEACHER_ROLES = ("teacher", "shadow")


class CalibrationError(AgentKDError):
    """Calibration cannot answer: too few labelled steps, or no rule reaches the target."""


@dataclass(frozen=True)
class StudentCall:
    """One student request of a step, enough to price fewer samples."""

    model: str
    n: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class LabelledStep:
    """A shadow step with its per-sample facts (aligned with the logged samples)."""

    run_id: str
    groups: list[int | None]
    logprobs: list[float | None]
    demo_matches: list[bool | None]
    teacher_matches: list[bool]
    student_calls: list[StudentCall]
    teacher_cost: float

    def student_cost(self, n: int) -> float:
        """What the first `n` samples cost: a single ``n``-request bills its prompt once and
        its completion tokens pro rata; separate requests cost theirs each."""
        total = len(self.groups)
        if not self.student_calls or total == 0:
            return 0.0
        if len(self.student_calls) == 1 and self.student_calls[0].n > 1:
            call = self.student_calls[0]
            return call_cost(call.model, call.prompt_tokens,
                             round(call.completion_tokens * n / total))
        return sum(c.cost_usd for c in self.student_calls) * n / total


class Variant(BaseModel):
    """A sampling setting the log can evaluate: temperature and sample count."""

    samples: int
    temperature: float


class CurvePoint(BaseModel):
    """One candidate rule's operating point."""

    variant: Variant
    rule: AcceptanceRule
    accepted: int
    accepted_share: float
    accuracy: float | None
    accuracy_low: float | None
    accuracy_high: float | None
    teacher_call_rate: float
    cost_per_step: float
    cost_per_episode: float


class Calibration(BaseModel):
    """What `calibrate` found. `chosen` is None when no rule qualifies; `problem` then says
    why and what to do (with ``require=True`` it is raised as a `CalibrationError`)."""

    runs: list[str]
    target_accuracy: float
    confidence: float
    labelled_steps: int
    min_accepted: int
    steps_per_episode: float
    chosen: CurvePoint | None
    paper_rule: CurvePoint | None
    curve: list[CurvePoint]
    problem: str | None = None

    def focus(self) -> CurvePoint | None:
        """The point to show: the chosen rule, else the paper's, else the most accurate."""
        return self.chosen or self.paper_rule or max(
            (p for p in self.curve if p.accuracy_low is not None),
            key=lambda p: p.accuracy_low or 0.0, default=None)

    def cascade(self) -> Cascade:
        """The chosen rule as a `Cascade` that `Distiller(cascade=...)` takes."""
        if self.chosen is None:
            raise CalibrationError(self.problem or "no rule was chosen")
        return Cascade.model_validate({"samples": self.chosen.variant.samples,
                                       "temperature": self.chosen.variant.temperature,
                                       "rule": self.chosen.rule})

    def summary(self) -> dict[str, Any]:
        """How the rule was chosen, for the config file (people read it; loading ignores it)."""
        return self.model_dump(mode="json", exclude={"curve"})


def min_accepted(target: float, confidence: float) -> int:
    """The fewest accepted labelled steps that can show accuracy >= `target` at
    `confidence`: with n steps and no error among them, the exact one-sided binomial bound
    reaches `target` only once target^n <= 1 − confidence."""
    if not 0.0 < target < 1.0:
        raise InputError(f"target accuracy must be in (0, 1), got {target}")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"confidence must be in (0, 1), got {confidence}")
    return math.ceil(math.log(1.0 - confidence) / math.log(target))


def load_labelled(log: TrajectoryLog, run_ids: Sequence[str]
                  ) -> tuple[dict[str, Variant], list[LabelledStep], float]:
    """(each run's logged variant, its labelled shadow steps, mean steps per episode)."""
    with log.session() as s:
        runs = {r.id: r for r in s.scalars(select(Run).where(Run.id.in_(run_ids)))}
        missing = [r for r in run_ids if r not in runs]
        if missing:
            known = list(s.scalars(select(Run.id).order_by(Run.created_at.desc()).limit(10)))
            raise InputError(f"no run {', '.join(map(repr, missing))} in the log; recent "
                             f"runs: {', '.join(known) or 'none'}")
        rows = s.execute(
            select(Step.id, Step.samples, Episode.run_id)
            .join(Episode, Episode.id == Step.episode_id)
            .where(Episode.run_id.in_(run_ids), Step.shadow.is_(True),
                   Step.teacher_action.is_not(None))
            .order_by(Step.id)).all()
        step_ids = [r[0] for r in rows]
        calls: dict[int, list[LLMCall]] = {}
        for chunk in range(0, len(step_ids), 500):
            for call in s.scalars(select(LLMCall).where(
                    LLMCall.step_id.in_(step_ids[chunk:chunk + 500]))):
                calls.setdefault(int(call.step_id or 0), []).append(call)
        lengths = s.execute(select(Episode.n_steps).where(
            Episode.run_id.in_(run_ids), Episode.status.in_(("success", "failure", "done"))
        )).scalars().all()
    variants = {}
    for run_id, run in runs.items():
        cascade = (run.config or {}).get("cascade") or {}
        variants[run_id] = Variant(samples=int(cascade.get("samples", 3)),
                                   temperature=float(cascade.get("temperature", 0.1)))
    steps = []
    for step_id, samples, run_id in rows:
        step_calls = calls.get(step_id, [])
        n = variants[run_id].samples
        samples = list(samples or [])
        pad = [None] * (n - len(samples))  # failed samples: no action, no label match
        steps.append(LabelledStep(
            run_id=run_id,
            groups=[x.get("group") for x in samples] + pad,
            logprobs=[x.get("logprob") for x in samples] + pad,
            demo_matches=[x.get("demo_match") for x in samples] + pad,
            teacher_matches=[bool(x.get("teacher_match")) for x in samples] + [False] * len(pad),
            student_calls=[StudentCall(c.model, c.n, c.prompt_tokens, c.completion_tokens,
                                       c.cost_usd) for c in step_calls if c.role == "student"],
            teacher_cost=sum(c.cost_usd for c in step_calls if c.role in _TEACHER_ROLES)))
    per_episode = float(np.mean(lengths)) if lengths else 1.0
    return variants, steps, per_episode


def _thresholds(signal: str, values: np.ndarray) -> list[float]:
    known = np.unique(values[~np.isnan(values)])
    if signal == "demo_agreement":
        return [1.0] if len(known) else []
    if len(known) > _MAX_THRESHOLDS:
        known = np.unique(np.quantile(known, np.linspace(0.0, 1.0, _MAX_THRESHOLDS)))
    return [float(v) for v in known]


def calibrate(steps: Sequence[LabelledStep], variants: dict[str, Variant], *,
              target_accuracy: float = 0.95, confidence: float = 0.95,
              steps_per_episode: float = 1.0, bootstrap: int = 2000, seed: int = 0,
              require: bool = True) -> Calibration:
    """Evaluate every (variant, signal, threshold) on the labelled steps and pick the
    cheapest rule whose accuracy's lower bound reaches `target_accuracy`.

    With `require=False` no error is raised when no rule qualifies: the result carries the
    curve, no chosen rule and the `problem`.
    """
    needed = min_accepted(target_accuracy, confidence)
    if bootstrap < 100:
        raise InputError(f"bootstrap must be >= 100 resamples, got {bootstrap}")
    problem = None
    if len(steps) < needed:
        problem = (
            f"too few labelled steps: {len(steps)} shadow steps with a teacher label; showing "
            f"accepted-step accuracy >= {target_accuracy:g} at {confidence:.0%} confidence "
            f"needs at least {needed} labelled steps the rule accepts (all of them correct), "
            f"so at least {needed} labelled steps in all. Label more steps: run with "
            f"Cascade(shadow=1.0) (`--shadow 1.0`) on more episodes, or lower the target or "
            f"the confidence")
    rng = np.random.default_rng(seed)
    alpha = 1.0 - confidence
    points: list[CurvePoint] = []
    by_variant: dict[tuple[float, int], list[LabelledStep]] = {}
    for step in steps:
        variant = variants[step.run_id]
        for n in range(1, variant.samples + 1):
            by_variant.setdefault((variant.temperature, n), []).append(step)
    for (temperature, n), group in sorted(by_variant.items()):
        variant = Variant(samples=n, temperature=temperature)
        signals = [step_signals(s.groups[:n], s.logprobs[:n], s.demo_matches[:n])
                   for s in group]
        correct = np.array([sig.chosen is not None and s.teacher_matches[sig.chosen]
                            for s, sig in zip(group, signals, strict=True)], dtype=float)
        student = np.array([s.student_cost(n) for s in group])
        teacher = np.array([s.teacher_cost for s in group])
        # Bootstrap weights shared by every candidate of this variant: one matrix product
        # scores them all.
        weights = rng.multinomial(len(group), np.full(len(group), 1.0 / len(group)),
                                  size=bootstrap).astype(float)
        for signal in SIGNALS:
            values = np.array([np.nan if (v := sig.value(signal)) is None else v
                               for sig in signals])
            rules = [AcceptanceRule(signal=signal, threshold=t)  # type: ignore[arg-type]
                     for t in _thresholds(signal, values)]
            if not rules:
                continue
            accept = np.array([[r.accepts(None if np.isnan(v) else float(v)) for r in rules]
                               for v in values], dtype=float)  # steps × rules
            points += _score(variant, rules, accept, correct, student, teacher, weights,
                             alpha, steps_per_episode)
    eligible = [p for p in points if p.accepted >= needed and p.accuracy_low is not None
                and p.accuracy_low >= target_accuracy - 1e-12]
    chosen = min(eligible, key=lambda p: (p.cost_per_step, -p.accepted_share), default=None)
    if chosen is None and problem is None:
        best = max((p for p in points if p.accepted >= needed and p.accuracy_low is not None),
                   key=lambda p: p.accuracy_low or 0.0, default=None)
        detail = (f"the best lower bound is {best.accuracy_low:.3f} ({best.rule.signal} "
                  f"threshold {best.rule.threshold:g}, N={best.variant.samples}, accepting "
                  f"{best.accepted_share:.0%})" if best else
                  f"no rule accepts the {needed} labelled steps needed")
        problem = (
            f"no acceptance rule reaches accepted-step accuracy {target_accuracy:g} at "
            f"{confidence:.0%} confidence on {len(steps)} labelled steps: {detail}. Lower "
            f"the target, label more steps, or keep the teacher (mode 'teacher')")
    if require and problem is not None:
        raise CalibrationError(problem)
    paper = next((p for p in points if p.variant.samples == 3
                  and abs(p.variant.temperature - 0.1) < 1e-9
                  and p.rule.signal == "majority_share" and p.rule.threshold >= 1.0 - 1e-9),
                 None)
    return Calibration(runs=sorted({s.run_id for s in steps}), target_accuracy=target_accuracy,
                       confidence=confidence, labelled_steps=len(steps), min_accepted=needed,
                       steps_per_episode=steps_per_episode, chosen=chosen, paper_rule=paper,
                       curve=points, problem=problem)


def _score(variant: Variant, rules: list[AcceptanceRule], accept: np.ndarray,
           correct: np.ndarray, student: np.ndarray, teacher: np.ndarray,
           weights: np.ndarray, alpha: float, steps_per_episode: float) -> list[CurvePoint]:
    accepted = accept.sum(axis=0)
    right = (accept * correct[:, None]).sum(axis=0)
    boot_accepted = weights @ accept  # resamples × rules
    boot_right = weights @ (accept * correct[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        boot_accuracy = np.where(boot_accepted > 0, boot_right / boot_accepted, np.nan)
    cost = student.mean() + ((1.0 - accept) * teacher[:, None]).mean(axis=0)
    points = []
    for j, rule in enumerate(rules):
        column = boot_accuracy[:, j]
        column = column[~np.isnan(column)]
        has = accepted[j] > 0 and len(column) > 0
        share = float(accepted[j] / len(accept))
        points.append(CurvePoint(
            variant=variant, rule=rule, accepted=int(accepted[j]), accepted_share=share,
            accuracy=float(right[j] / accepted[j]) if accepted[j] else None,
            accuracy_low=float(np.quantile(column, alpha)) if has else None,
            accuracy_high=float(np.quantile(column, 1.0 - alpha)) if has else None,
            teacher_call_rate=1.0 - share, cost_per_step=float(cost[j]),
            cost_per_episode=float(cost[j]) * steps_per_episode))
    return points


def calibrate_log(log: TrajectoryLog, run_ids: Sequence[str], **options: Any) -> Calibration:
    """`calibrate` over the shadow steps of `run_ids` in `log`."""
    if not run_ids:
        raise InputError("name at least one run whose steps carry shadow labels (--run ID)")
    variants, steps, per_episode = load_labelled(log, run_ids)
    return calibrate(steps, variants, steps_per_episode=per_episode, **options)


def plot_curve(result: Calibration, path: str | Path) -> Path:
    """Accepted share vs accepted-step accuracy, one line per signal at the chosen variant
    (the paper's N=3 when nothing was chosen), the target and the chosen point marked."""
    try:
        import matplotlib
    except ImportError:
        raise AgentKDError("the calibration plot needs matplotlib: pip install matplotlib "
                           "(it comes with 'agentkd[memory]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    focus = result.focus()
    variant = focus.variant if focus else Variant(samples=3, temperature=0.1)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for signal in SIGNALS:
        points = sorted((p for p in result.curve if p.variant == variant
                         and p.rule.signal == signal and p.accuracy is not None),
                        key=lambda p: p.accepted_share)
        if points:
            ax.plot([p.accepted_share for p in points], [p.accuracy or 0.0 for p in points],
                    "o-", markersize=3, label=signal)
    ax.axhline(result.target_accuracy, color="grey", linestyle="--", linewidth=1,
               label=f"target {result.target_accuracy:g}")
    for point, marker, name in ((result.chosen, "*", "calibrated"),
                                (result.paper_rule, "X", "paper (unanimous, N=3)")):
        if point is not None and point.accuracy is not None:
            ax.errorbar([point.accepted_share], [point.accuracy],
                        yerr=[[point.accuracy - (point.accuracy_low or point.accuracy)],
                              [(point.accuracy_high or point.accuracy) - point.accuracy]],
                        fmt=marker, markersize=12, capsize=4, label=name)
    ax.set_xlabel("accepted share of steps (student acts)")
    ax.set_ylabel("accepted-step accuracy (vs teacher)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"cascade calibration: N={variant.samples}, T={variant.temperature:g}, "
                 f"{result.labelled_steps} labelled steps")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
