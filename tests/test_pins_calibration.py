"""Pins of threshold calibration and `agentkd calibrate`: exact values on hand-built labelled
steps, a real SQLite log and the CLI's printed tables (issue 21: these survived mutation).

The labelled set `FOUR` is small enough to work out by hand. Its one run samples N=3 at
T=0.1; each step's student made one n=3 request (1000 prompt, 300 completion tokens at the
conftest's 1 / 2 USD per million: 0.0012, 0.0014, 0.0016 USD for its first 1, 2, 3 samples)
and the teacher costs 0.01 per step:

    step  groups     logprob  demo  teacher matches
    A     0 0 0      -0.1     yes   all
    B     0 0 0      -0.2     no    all
    C     0 1 0      -0.9     no    none
    D     0 1 2      -1.5     no    none

At target 0.7 and confidence 0.5 a rule must accept 2 labelled steps, and the median of
its bootstrapped accuracy must reach 0.7. Rules that accept C or D beside A and B are right
on 2/3 or 1/2 of their steps: more than half their resamples fall below 0.7. The cheapest
that qualifies is one sample's logprob >= -0.2 (A and B: both right, so every resample says
1.0); the paper's rule (N=3, unanimous) accepts the same two steps at three samples' price.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from rich.console import Console
from typer.testing import CliRunner

from agentkd.cascades.calibration import (
    Calibration,
    CalibrationError,
    CurvePoint,
    LabelledStep,
    StudentCall,
    Variant,
    calibrate,
    calibrate_log,
    load_labelled,
    plot_curve,
)
from agentkd.cascades.cli import _curve_table, _table
from agentkd.cli import app
from agentkd.config import SIGNALS, AcceptanceRule
from agentkd.errors import InputError
from agentkd.log import CallRecord, StepRecord, TrajectoryLog

STUDENT, TEACHER = "scripted/student", "scripted/teacher"  # priced in conftest
N3 = Variant(samples=3, temperature=0.1)
N1 = Variant(samples=1, temperature=0.1)
# (groups, logprob of every sample, demo match of every sample, teacher match of every sample)
ROWS: dict[str, tuple[list[int | None], float, bool, bool]] = {
    "A": ([0, 0, 0], -0.1, True, True),
    "B": ([0, 0, 0], -0.2, False, True),
    "C": ([0, 1, 0], -0.9, False, False),
    "D": ([0, 1, 2], -1.5, False, False),
}
ONE_N3_REQUEST = StudentCall(STUDENT, 3, 1000, 300, 0.0016)


def labelled(name: str, run_id: str = "r") -> LabelledStep:
    groups, logprob, demo, right = ROWS[name]
    return LabelledStep(run_id=run_id, groups=list(groups), logprobs=[logprob] * 3,
                        demo_matches=[demo] * 3, teacher_matches=[right] * 3,
                        student_calls=[ONE_N3_REQUEST], teacher_cost=0.01)


FOUR = [labelled(name) for name in "ABCD"]


def point(result: Calibration, samples: int, signal: str, threshold: float,
          temperature: float = 0.1) -> CurvePoint:
    (found,) = [p for p in result.curve
                if p.variant == Variant(samples=samples, temperature=temperature)
                and p.rule.signal == signal and p.rule.threshold == pytest.approx(threshold)]
    return found


def facts(p: CurvePoint) -> tuple[Any, ...]:
    return (p.variant.samples, p.variant.temperature, p.rule.signal,
            pytest.approx(p.rule.threshold), p.accepted, p.accepted_share, p.accuracy,
            p.accuracy_low, p.accuracy_high, p.teacher_call_rate,
            pytest.approx(p.cost_per_step), pytest.approx(p.cost_per_episode))


def made(samples: int, signal: str, threshold: float, accepted: int, share: float,
         accuracy: float | None, low: float | None, high: float | None, cost: float,
         per_episode: float, temperature: float = 0.1) -> tuple[Any, ...]:
    return (samples, temperature, signal, pytest.approx(threshold), accepted, share, accuracy,
            low, high, 1.0 - share, pytest.approx(cost), pytest.approx(per_episode))


# --- what fewer samples cost ------------------------------------------------------------------

STUDENT_COSTS = [
    # one n=3 request: the prompt once, completion tokens pro rata (round(300·n/3))
    ([ONE_N3_REQUEST], 3, 1, (1000 * 1 + 100 * 2) / 1e6),
    ([ONE_N3_REQUEST], 3, 2, (1000 * 1 + 200 * 2) / 1e6),
    ([ONE_N3_REQUEST], 3, 3, (1000 * 1 + 300 * 2) / 1e6),
    # completion tokens are rounded to the nearest: 100·1/3 -> 33, 100·2/3 -> 67
    ([StudentCall(STUDENT, 3, 0, 100, 0.0)], 3, 1, 33 * 2 / 1e6),
    ([StudentCall(STUDENT, 3, 0, 100, 0.0)], 3, 2, 67 * 2 / 1e6),
    # separate requests: their logged costs, pro rata over the step's samples
    ([StudentCall(STUDENT, 1, 10, 10, 0.3)] * 3, 3, 1, 0.3),
    ([StudentCall(STUDENT, 1, 10, 10, 0.3)] * 3, 3, 2, 0.6),
    ([StudentCall(STUDENT, 1, 10, 10, 0.2), StudentCall(STUDENT, 2, 10, 10, 0.4)], 3, 3, 0.6),
    # a single one-sample request is priced as logged, not re-priced from its tokens
    ([StudentCall(STUDENT, 1, 1000, 300, 0.5)], 1, 1, 0.5),
    # nothing logged, or no samples: nothing to price
    ([], 3, 2, 0.0),
    ([ONE_N3_REQUEST], 0, 1, 0.0),
]


@pytest.mark.parametrize(("calls", "samples", "n", "expected"), STUDENT_COSTS)
def test_student_cost_of_the_first_n_samples(calls: list[StudentCall], samples: int, n: int,
                                             expected: float) -> None:
    step = LabelledStep(run_id="r", groups=[0] * samples, logprobs=[], demo_matches=[],
                        teacher_matches=[True] * samples, student_calls=calls, teacher_cost=0.0)
    assert step.student_cost(n) == pytest.approx(expected, rel=1e-12, abs=0.0)


# --- calibrate on the hand-built set ----------------------------------------------------------

def test_calibration_picks_the_cheapest_rule_that_shows_the_target() -> None:
    result = calibrate(FOUR, {"r": N3}, target_accuracy=0.7, confidence=0.5,
                       steps_per_episode=10.0, bootstrap=2000, seed=0)
    assert (result.runs, result.labelled_steps, result.min_accepted, result.problem) == (
        ["r"], 4, 2, None)
    assert (result.target_accuracy, result.confidence, result.steps_per_episode) == (
        0.7, 0.5, 10.0)
    assert result.chosen is not None and result.paper_rule is not None
    # one sample, logprob >= -0.2: A and B, both right; the teacher on C and D
    assert facts(result.chosen) == made(1, "mean_logprob", -0.2, 2, 0.5, 1.0, 1.0, 1.0,
                                        0.0012 + 0.5 * 0.01, 10 * (0.0012 + 0.5 * 0.01))
    # the paper's unanimous N=3 accepts the same steps at three samples' price
    assert facts(result.paper_rule) == made(3, "majority_share", 1.0, 2, 0.5, 1.0, 1.0, 1.0,
                                            0.0016 + 0.5 * 0.01, 10 * (0.0016 + 0.5 * 0.01))
    assert result.focus() is result.chosen
    cascade = result.cascade()
    assert (cascade.samples, cascade.temperature, cascade.rule) == (
        1, 0.1, AcceptanceRule(signal="mean_logprob", threshold=-0.2))


def test_the_curve_holds_every_sample_count_signal_and_threshold_in_order() -> None:
    result = calibrate(FOUR, {"r": N3}, target_accuracy=0.5, confidence=0.75, bootstrap=200)
    lp = [-1.5, -0.9, -0.2, -0.1]
    expected = (
        # N=1: one sample always agrees with itself
        [(1, "majority_share", 1.0), (1, "distinct_actions", 1.0)]
        + [(1, "mean_logprob", t) for t in lp] + [(1, "demo_agreement", 1.0)]
        # N=2: C and D split 1-1
        + [(2, "majority_share", t) for t in (0.5, 1.0)]
        + [(2, "distinct_actions", t) for t in (1.0, 2.0)]
        + [(2, "mean_logprob", t) for t in lp] + [(2, "demo_agreement", 1.0)]
        # N=3: C 2-1, D three ways
        + [(3, "majority_share", t) for t in (1 / 3, 2 / 3, 1.0)]
        + [(3, "distinct_actions", t) for t in (1.0, 2.0, 3.0)]
        + [(3, "mean_logprob", t) for t in lp] + [(3, "demo_agreement", 1.0)])
    assert [(p.variant.samples, p.rule.signal, p.rule.threshold) for p in result.curve] == [
        (n, s, pytest.approx(t)) for n, s, t in expected]
    assert {p.variant.temperature for p in result.curve} == {0.1}


def test_curve_points_count_accept_and_bound_exactly() -> None:
    # Confidence 0.75: the bounds are the bootstrap's 25% and 75% quantiles.
    result = calibrate(FOUR, {"r": N3}, target_accuracy=0.5, confidence=0.75,
                       steps_per_episode=2.0, bootstrap=2000, seed=0)
    c1, c2, c3 = 0.0012, 0.0014, 0.0016
    # Accepting all four, two right: a resample's accuracy is Binomial(4, 1/2) / 4, whose
    # 25% and 75% quantiles are 1/4 and 3/4 (2000 resamples sit far from the edges).
    assert facts(point(result, 1, "majority_share", 1.0)) == made(
        1, "majority_share", 1.0, 4, 1.0, 0.5, 0.25, 0.75, c1, 2 * c1)
    assert facts(point(result, 3, "majority_share", 1 / 3)) == made(
        3, "majority_share", 1 / 3, 4, 1.0, 0.5, 0.25, 0.75, c3, 2 * c3)
    # A, B and C (whose majority is its first sample, group 0 twice: wrong). A resample
    # without C (about 32% of them) says 1.0, so 1.0 is the 75% quantile.
    abc = point(result, 3, "majority_share", 2 / 3)
    assert abc.accuracy_low is not None and 0.0 < abc.accuracy_low < 2 / 3
    assert facts(abc) == made(3, "majority_share", 2 / 3, 3, 0.75, 2 / 3, abc.accuracy_low,
                              1.0, c3 + 0.25 * 0.01, 2 * (c3 + 0.25 * 0.01))
    # distinct actions accept at most the threshold
    assert facts(point(result, 2, "distinct_actions", 1.0)) == made(
        2, "distinct_actions", 1.0, 2, 0.5, 1.0, 1.0, 1.0, c2 + 0.5 * 0.01,
        2 * (c2 + 0.5 * 0.01))
    assert facts(point(result, 3, "distinct_actions", 3.0)) == made(
        3, "distinct_actions", 3.0, 4, 1.0, 0.5, 0.25, 0.75, c3, 2 * c3)
    # a rule accepting one step: accuracy 1, bounds over the resamples that drew it
    assert facts(point(result, 1, "mean_logprob", -0.1)) == made(
        1, "mean_logprob", -0.1, 1, 0.25, 1.0, 1.0, 1.0, c1 + 0.75 * 0.01,
        2 * (c1 + 0.75 * 0.01))
    assert facts(point(result, 1, "demo_agreement", 1.0)) == made(
        1, "demo_agreement", 1.0, 1, 0.25, 1.0, 1.0, 1.0, c1 + 0.75 * 0.01,
        2 * (c1 + 0.75 * 0.01))


def test_a_rule_accepting_only_wrong_steps_has_accuracy_and_bounds_zero() -> None:
    steps = [labelled("C"), labelled("D"), labelled("A")]
    for step in steps[:2]:
        step.logprobs[:] = [-0.05] * 3  # C and D now look the surest
    result = calibrate(steps, {"r": N3}, target_accuracy=0.5, confidence=0.75, bootstrap=500,
                       require=False)
    assert facts(point(result, 1, "mean_logprob", -0.05)) == made(
        1, "mean_logprob", -0.05, 2, 2 / 3, 0.0, 0.0, 0.0, 0.0012 + 0.01 / 3,
        0.0012 + 0.01 / 3)


def test_a_step_without_any_action_is_never_accepted_nor_right() -> None:
    empty = LabelledStep(run_id="r", groups=[None, None, None], logprobs=[None] * 3,
                         demo_matches=[None] * 3, teacher_matches=[True] * 3,
                         student_calls=[ONE_N3_REQUEST], teacher_cost=0.01)
    result = calibrate([labelled("A"), labelled("B"), empty], {"r": N3}, target_accuracy=0.5,
                       confidence=0.75, bootstrap=500)
    # it has no signal value, so no threshold of its own, and the teacher acts on it
    assert facts(point(result, 3, "majority_share", 1.0)) == made(
        3, "majority_share", 1.0, 2, 2 / 3, 1.0, 1.0, 1.0, 0.0016 + 0.01 / 3, 0.0016 + 0.01 / 3)
    assert [(p.rule.signal, p.rule.threshold) for p in result.curve
            if p.variant.samples == 3] == [
        ("majority_share", 1.0), ("distinct_actions", 1.0), ("mean_logprob", -0.2),
        ("mean_logprob", -0.1), ("demo_agreement", 1.0)]


def test_steps_without_actions_leave_no_rule_to_try() -> None:
    empty = LabelledStep(run_id="r", groups=[None, None, None], logprobs=[None] * 3,
                         demo_matches=[None] * 3, teacher_matches=[True] * 3,
                         student_calls=[], teacher_cost=0.01)
    result = calibrate([empty] * 3, {"r": N3}, target_accuracy=0.5, confidence=0.75,
                       bootstrap=100, require=False)
    assert result.curve == [] and result.chosen is None and result.paper_rule is None
    assert result.problem == (
        "no acceptance rule reaches accepted-step accuracy 0.5 at 75% confidence on 3 "
        "labelled steps: no rule accepts the 2 labelled steps needed. Lower the target, "
        "label more steps, or keep the teacher (mode 'teacher')")
    with pytest.raises(CalibrationError, match=r"^no acceptance rule reaches"):
        calibrate([empty] * 3, {"r": N3}, target_accuracy=0.5, confidence=0.75, bootstrap=100)


def test_each_run_is_evaluated_at_its_own_temperature_and_sample_counts() -> None:
    steps = [labelled(name) for name in "ABCD"] + [labelled(n, "hot") for n in "AB"]
    variants = {"r": N3, "hot": Variant(samples=2, temperature=0.7)}
    result = calibrate(steps, variants, target_accuracy=0.5, confidence=0.75, bootstrap=200)
    assert result.runs == ["hot", "r"] and result.labelled_steps == 6
    assert sorted({(p.variant.temperature, p.variant.samples) for p in result.curve}) == [
        (0.1, 1), (0.1, 2), (0.1, 3), (0.7, 1), (0.7, 2)]
    # the hot run's steps (A and B) only, at its own temperature
    assert facts(point(result, 2, "majority_share", 1.0, 0.7)) == made(
        2, "majority_share", 1.0, 2, 1.0, 1.0, 1.0, 1.0, 0.0014, 0.0014, temperature=0.7)
    # at T=0.1, run r's four: two unanimous samples (A, B), or at least one of two (all)
    assert point(result, 2, "majority_share", 1.0).accepted == 2
    assert point(result, 2, "majority_share", 0.5).accepted == 4


def test_the_paper_rule_is_found_only_at_three_samples_and_temperature_point_one() -> None:
    two = {"r": Variant(samples=2, temperature=0.1)}
    assert calibrate(FOUR, two, target_accuracy=0.5, confidence=0.75,
                     bootstrap=200).paper_rule is None
    warm = {"r": Variant(samples=3, temperature=0.3)}
    result = calibrate(FOUR, warm, target_accuracy=0.5, confidence=0.75, bootstrap=200)
    assert result.paper_rule is None and result.chosen is not None


def test_too_few_labelled_steps_is_explained_exactly() -> None:
    result = calibrate(FOUR[:1], {"r": N3}, target_accuracy=0.5, confidence=0.75,
                       bootstrap=100, require=False)
    assert result.problem == (
        "too few labelled steps: 1 shadow steps with a teacher label; showing accepted-step "
        "accuracy >= 0.5 at 75% confidence needs at least 2 labelled steps the rule accepts "
        "(all of them correct), so at least 2 labelled steps in all. Label more steps: run "
        "with Cascade(shadow=1.0) (`--shadow 1.0`) on more episodes, or lower the target or "
        "the confidence")
    assert result.chosen is None and result.labelled_steps == 1
    # exactly as many steps as needed is enough to try
    assert calibrate(FOUR[:2], {"r": N3}, target_accuracy=0.5, confidence=0.75,
                     bootstrap=100).chosen is not None


def test_no_qualifying_rule_names_the_best_lower_bound() -> None:
    result = calibrate(FOUR, {"r": N3}, target_accuracy=0.9, confidence=0.5, bootstrap=2000,
                       require=False)
    # min_accepted(0.9, 0.5) = 7 > 4: no rule can accept enough steps
    assert result.problem == (
        "too few labelled steps: 4 shadow steps with a teacher label; showing accepted-step "
        "accuracy >= 0.9 at 50% confidence needs at least 7 labelled steps the rule accepts "
        "(all of them correct), so at least 7 labelled steps in all. Label more steps: run "
        "with Cascade(shadow=1.0) (`--shadow 1.0`) on more episodes, or lower the target or "
        "the confidence")
    result = calibrate(FOUR, {"r": N3}, target_accuracy=0.75, confidence=0.5, bootstrap=2000,
                       require=False)
    # min_accepted(0.75, 0.5) = 3: the rules accepting three or four steps are right on
    # 2/3 or 1/2 of them; the best bound is the first of the highest
    eligible = [p for p in result.curve if p.accepted >= 3]
    best = eligible[[p.accuracy_low for p in eligible].index(
        max(p.accuracy_low or 0.0 for p in eligible))]
    assert (best.accepted, best.accuracy) == (3, pytest.approx(2 / 3))
    assert result.chosen is None
    assert result.problem == (
        f"no acceptance rule reaches accepted-step accuracy 0.75 at 50% confidence on 4 "
        f"labelled steps: the best lower bound is {best.accuracy_low:.3f} "
        f"({best.rule.signal} threshold {best.rule.threshold:g}, N={best.variant.samples}, "
        f"accepting 75%). Lower the target, label more steps, or keep the teacher (mode "
        f"'teacher')")


def test_between_rules_of_equal_cost_the_one_accepting_more_steps_wins() -> None:
    # E is right and its teacher call was free: accepting it beside A and B costs nothing
    # more. A second wrong C keeps the rules that accept C too below the target.
    free = LabelledStep(run_id="r", groups=[0, 0, 0], logprobs=[-0.3] * 3,
                        demo_matches=[False] * 3, teacher_matches=[True] * 3,
                        student_calls=[ONE_N3_REQUEST], teacher_cost=0.0)
    result = calibrate([*FOUR, labelled("C"), free], {"r": N3}, target_accuracy=0.7,
                       confidence=0.5, bootstrap=500)
    narrow = point(result, 1, "mean_logprob", -0.2)
    wide = point(result, 1, "mean_logprob", -0.3)
    # the teacher on C, C and D either way
    assert narrow.cost_per_step == wide.cost_per_step == pytest.approx(0.0012 + 3 * 0.01 / 6)
    assert (narrow.accepted, wide.accepted, wide.accuracy_low) == (2, 3, 1.0)
    assert result.chosen is wide


def test_the_defaults_are_95_percent_at_95_percent_confidence_from_2000_resamples() -> None:
    result = calibrate(FOUR, {"r": N3}, require=False)
    assert (result.target_accuracy, result.confidence, result.min_accepted,
            result.steps_per_episode) == (0.95, 0.95, 59, 1.0)
    # 120 steps, right on a share that falls with the logprob: many distinct bootstrap
    # accuracies, so the bounds move with the number of resamples and the seed
    steps = [LabelledStep(run_id="r", groups=[0, 0, i % 3 // 2], logprobs=[-i / 40] * 3,
                          demo_matches=[i % 2 == 0] * 3, teacher_matches=[i % 7 < 7 - i // 20] * 3,
                          student_calls=[ONE_N3_REQUEST], teacher_cost=0.01)
               for i in range(120)]
    default = calibrate(steps, {"r": N3}, require=False)
    assert default == calibrate(steps, {"r": N3}, target_accuracy=0.95, confidence=0.95,
                                steps_per_episode=1.0, bootstrap=2000, seed=0, require=False)
    assert default != calibrate(steps, {"r": N3}, bootstrap=2001, require=False)
    assert default != calibrate(steps, {"r": N3}, seed=1, require=False)


def test_bootstrap_needs_at_least_a_hundred_resamples() -> None:
    assert calibrate(FOUR, {"r": N3}, target_accuracy=0.5, confidence=0.75,
                     bootstrap=100).chosen is not None
    with pytest.raises(InputError, match=r"^bootstrap must be >= 100 resamples, got 99$"):
        calibrate(FOUR, {"r": N3}, target_accuracy=0.5, confidence=0.75, bootstrap=99)


# --- which point to show --------------------------------------------------------------------

def _curve_point(low: float | None, threshold: float = 1.0) -> CurvePoint:
    return CurvePoint(variant=N3, rule=AcceptanceRule(threshold=threshold), accepted=3,
                      accepted_share=0.5, accuracy=low, accuracy_low=low, accuracy_high=low,
                      teacher_call_rate=0.5, cost_per_step=0.1, cost_per_episode=0.1)


def _calibration(chosen: CurvePoint | None, paper: CurvePoint | None,
                 curve: list[CurvePoint]) -> Calibration:
    return Calibration(runs=["r"], target_accuracy=0.5, confidence=0.75, labelled_steps=4,
                       min_accepted=2, steps_per_episode=1.0, chosen=chosen, paper_rule=paper,
                       curve=curve)


def test_focus_is_the_chosen_rule_then_the_papers_then_the_best_bound() -> None:
    chosen, paper = _curve_point(0.9, 0.5), _curve_point(0.6, 1.0)
    worse, better, unbounded = _curve_point(0.2, 0.3), _curve_point(0.7, 0.4), _curve_point(None)
    curve = [worse, better, unbounded]
    assert _calibration(chosen, paper, curve).focus() == chosen
    assert _calibration(chosen, None, curve).focus() == chosen
    assert _calibration(None, paper, curve).focus() == paper
    assert _calibration(None, None, curve).focus() == better
    assert _calibration(None, None, [unbounded]).focus() is None


# --- the log ----------------------------------------------------------------------------------

def _samples(groups: list[int | None], logprob: float | None, demo: bool | None,
             right: bool | None) -> list[dict[str, Any]]:
    return [{"action": None if g is None else f"act {g}", "group": g, "logprob": logprob,
             "demo_match": demo, "teacher_match": right} for g in groups]


def _student_call(n: int = 3, prompt: int = 1000, completion: int = 300,
                  cost: float = 0.0016) -> CallRecord:
    return CallRecord(role="student", model=STUDENT, provider="scripted", n=n,
                      prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost)


def _teacher_call(role: str, cost: float) -> CallRecord:
    return CallRecord(role=role, model=TEACHER, provider="scripted", cost_usd=cost)


def _step(log: TrajectoryLog, run: str, episode: int, idx: int, samples: list[dict[str, Any]],
          calls: list[CallRecord], *, shadow: bool = True,
          teacher_action: str | None = "act 0") -> None:
    log.record_step(episode, run, StepRecord(
        idx=idx, prompt_hash=f"{run}-{episode}-{idx}", new_messages=[], verdict="student",
        actor="student", samples=samples, shadow=shadow, teacher_action=teacher_action), calls)


def four_step_log(url: str) -> TrajectoryLog:
    """`FOUR` as a shadow run "r" (N=3, T=0.1) in a real log: A and B and an unlabelled step
    in a won episode, C and D in a lost one, and a still-running episode of one step."""
    log = TrajectoryLog(url)
    log.ensure_run("r", mode="distill", teacher=TEACHER, student=STUDENT,
                   config={"cascade": {"samples": 3, "temperature": 0.1}})
    won, lost, running = (log.start_episode("r", task) for task in ("t1", "t2", "t3"))
    for episode, names in ((won, "AB"), (lost, "CD")):
        for idx, name in enumerate(names):
            groups, logprob, demo, right = ROWS[name]
            teacher = _teacher_call("shadow" if right else "teacher", 0.01)
            _step(log, "r", episode, idx, _samples(groups, logprob, demo, right),
                  [_student_call(), teacher])
    _step(log, "r", won, 2, _samples([0, 0, 0], -0.1, True, None), [_student_call()],
          shadow=False, teacher_action=None)
    _step(log, "r", running, 0, _samples([0, 0, 0], -0.1, True, None), [_student_call()],
          shadow=False, teacher_action=None)
    log.finish_episode(won, status="success", success=True)
    log.finish_episode(lost, status="failure", success=False)
    return log


def test_labelled_steps_load_from_the_log_as_logged(log_url: str) -> None:
    log = TrajectoryLog(log_url)
    log.ensure_run("n3", mode="distill", teacher=TEACHER, student=STUDENT,
                   config={"cascade": {"samples": 3, "temperature": 0.3}})
    log.ensure_run("plain", mode="distill", teacher=TEACHER, student=STUDENT)
    log.ensure_run("other", mode="distill", teacher=TEACHER, student=STUDENT)
    won, lost, crashed, running = (log.start_episode("n3", t) for t in "abcd")
    done, elsewhere = log.start_episode("plain", "e"), log.start_episode("other", "f")
    # a labelled step of three samples, its student request and its shadow teacher call
    _step(log, "n3", won, 0, _samples([0, 0, 1], -0.25, True, True)[:2]
          + _samples([1], -1.75, False, False),
          [_student_call(), _teacher_call("shadow", 0.02)])
    _step(log, "n3", won, 1, _samples([0, 0, 0], -0.1, True, None), [_student_call()],
          shadow=False, teacher_action=None)  # not drawn: no label
    _step(log, "n3", won, 2, _samples([0, 0, 0], -0.1, True, None), [_student_call()],
          shadow=True, teacher_action=None)  # drawn, but the teacher's call failed
    # two samples came back of three: the third counts as no action, and not right
    _step(log, "n3", lost, 0, [{"group": 0, "logprob": -0.5, "demo_match": None,
                                "teacher_match": False},
                               {"group": 0, "logprob": None, "teacher_match": True}],
          [_student_call(1, 10, 5, 0.25), _student_call(1, 10, 5, 0.5),
           _teacher_call("teacher", 0.125), _teacher_call("judge", 7.0)])
    # a teacher action on a step not drawn for shadowing: not part of the unbiased sample
    _step(log, "n3", crashed, 0, _samples([0, 0, 0], -0.1, True, True), [_student_call()],
          shadow=False, teacher_action="act 0")
    for idx in range(1, 5):
        _step(log, "n3", crashed, idx, [], [], shadow=False, teacher_action=None)
    _step(log, "n3", running, 0, [], [], shadow=False, teacher_action=None)
    _step(log, "plain", done, 0, _samples([0], None, None, True),
          [_student_call(1, 100, 10, 0.001)])
    _step(log, "plain", done, 1, [], [], shadow=False, teacher_action=None)
    _step(log, "other", elsewhere, 0, _samples([0, 0, 0], -0.1, True, True), [_student_call()])
    log.finish_episode(won, status="success", success=True)
    log.finish_episode(lost, status="failure", success=False)
    log.finish_episode(crashed, status="error", success=None)
    log.finish_episode(done, status="done", success=None)
    log.finish_episode(elsewhere, status="success", success=True)

    variants, steps, per_episode = load_labelled(log, ["n3", "plain"])
    assert variants == {"n3": Variant(samples=3, temperature=0.3),
                        "plain": Variant(samples=3, temperature=0.1)}  # the defaults
    assert steps == [
        LabelledStep(run_id="n3", groups=[0, 0, 1], logprobs=[-0.25, -0.25, -1.75],
                     demo_matches=[True, True, False], teacher_matches=[True, True, False],
                     student_calls=[StudentCall(STUDENT, 3, 1000, 300, 0.0016)],
                     teacher_cost=0.02),
        LabelledStep(run_id="n3", groups=[0, 0, None], logprobs=[-0.5, None, None],
                     demo_matches=[None, None, None], teacher_matches=[False, True, False],
                     student_calls=[StudentCall(STUDENT, 1, 10, 5, 0.25),
                                    StudentCall(STUDENT, 1, 10, 5, 0.5)],
                     teacher_cost=0.125),
        LabelledStep(run_id="plain", groups=[0, None, None], logprobs=[None, None, None],
                     demo_matches=[None, None, None], teacher_matches=[True, False, False],
                     student_calls=[StudentCall(STUDENT, 1, 100, 10, 0.001)],
                     teacher_cost=0.0),
    ]
    # finished episodes only (won 3 steps, lost 1, done 2): not the crashed or running ones
    assert per_episode == 2.0
    assert [s.run_id for s in load_labelled(log, ["plain"])[1]] == ["plain"]


def test_a_run_with_no_finished_episode_counts_one_step_per_episode(log_url: str) -> None:
    log = TrajectoryLog(log_url)
    log.ensure_run("r", mode="distill", teacher=TEACHER, student=STUDENT)
    episode = log.start_episode("r", "t")
    _step(log, "r", episode, 0, _samples([0, 0, 0], -0.1, True, True), [_student_call()])
    _step(log, "r", episode, 1, _samples([0, 0, 0], -0.1, True, True), [_student_call()])
    variants, steps, per_episode = load_labelled(log, ["r"])
    assert (len(steps), per_episode) == (2, 1.0)


def test_unknown_runs_are_named_with_the_recent_ones(log_url: str) -> None:
    log = TrajectoryLog(log_url)
    with pytest.raises(InputError, match=r"^no run 'x', 'y' in the log; recent runs: none$"):
        load_labelled(log, ["x", "y"])
    log.ensure_run("first", mode="distill", teacher=TEACHER, student=STUDENT)
    log.ensure_run("second", mode="distill", teacher=TEACHER, student=STUDENT)
    with pytest.raises(InputError, match=r"^no run 'x' in the log; recent runs: second, first$"):
        load_labelled(log, ["first", "x"])
    with pytest.raises(InputError, match=r"^name at least one run whose steps carry shadow "
                                         r"labels \(--run ID\)$"):
        calibrate_log(log, [])


def test_calibrating_the_log_equals_calibrating_its_steps(log_url: str) -> None:
    log = four_step_log(log_url)
    variants, steps, per_episode = load_labelled(log, ["r"])
    assert steps == FOUR and per_episode == 2.5  # won 3 steps, lost 2; running left out
    from_log = calibrate_log(log, ["r"], target_accuracy=0.7, confidence=0.5, bootstrap=300)
    direct = calibrate(FOUR, {"r": N3}, target_accuracy=0.7, confidence=0.5, bootstrap=300,
                       steps_per_episode=2.5)
    assert from_log == direct
    assert from_log.chosen is not None and from_log.chosen.cost_per_episode == pytest.approx(
        2.5 * (0.0012 + 0.005))


# --- the plot ---------------------------------------------------------------------------------

@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures `plot_curve` draws, kept as pyplot closes them."""
    matplotlib.use("Agg")
    from matplotlib import pyplot

    kept: list[Any] = []
    close = pyplot.close

    def keep(fig: Any = None) -> None:
        kept.append(fig)
        close(fig)

    monkeypatch.setattr(pyplot, "close", keep)
    return kept


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_plot_draws_each_signal_the_target_and_both_rules(tmp_path: Path,
                                                               figures: list[Any]) -> None:
    result = calibrate(FOUR, {"r": N3}, target_accuracy=0.7, confidence=0.5, bootstrap=2000)
    written = plot_curve(result, tmp_path / "new" / "folders" / "curve.png")
    assert written == tmp_path / "new" / "folders" / "curve.png"
    assert _png_size(written) == (780, 540)  # 6.5 × 4.5 inches at 120 dpi
    (fig,) = figures
    (ax,) = fig.axes
    assert ax.get_title() == "cascade calibration: N=1, T=0.1, 4 labelled steps"
    assert ax.get_xlabel() == "accepted share of steps (student acts)"
    assert ax.get_ylabel() == "accepted-step accuracy (vs teacher)"
    assert ax.get_xlim() == (-0.02, 1.02) and ax.get_ylim() == (-0.02, 1.02)
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "majority_share", "distinct_actions", "mean_logprob", "demo_agreement", "target 0.7",
        "calibrated", "paper (unanimous, N=3)"]
    assert {t.get_fontsize() for t in legend.get_texts()} == {8.0}
    lines = {line.get_label(): line for line in ax.get_lines()}
    # the chosen variant (N=1), each signal's points by accepted share
    assert list(lines["mean_logprob"].get_xdata()) == [0.25, 0.5, 0.75, 1.0]
    assert list(lines["mean_logprob"].get_ydata()) == pytest.approx([1.0, 1.0, 2 / 3, 0.5])
    assert {(line.get_marker(), line.get_linestyle(), line.get_markersize())
            for name, line in lines.items() if name in SIGNALS} == {("o", "-", 3.0)}
    assert list(lines["majority_share"].get_xdata()) == [1.0]
    assert list(lines["majority_share"].get_ydata()) == [0.5]
    assert list(lines["demo_agreement"].get_xdata()) == [0.25]
    assert list(lines["target 0.7"].get_ydata()) == [0.7, 0.7]
    marks = {c.get_label(): c for c in ax.containers}
    for name, share in (("calibrated", 0.5), ("paper (unanimous, N=3)", 0.5)):
        data, _caps, (bars,) = marks[name].lines
        assert (list(data.get_xdata()), list(data.get_ydata())) == ([share], [1.0])
        # the interval [low, high] as the error bar: here 1.0 to 1.0
        assert [[list(xy) for xy in segment] for segment in bars.get_segments()] == [
            [[share, 1.0], [share, 1.0]]]


def test_the_plot_marks_the_interval_of_an_uncertain_rule(tmp_path: Path,
                                                          figures: list[Any]) -> None:
    chosen = _curve_point(0.6)
    chosen = chosen.model_copy(update={"accuracy": 0.75, "accuracy_low": 0.6,
                                       "accuracy_high": 0.8, "accepted_share": 0.4})
    wrong_variant = chosen.model_copy(update={"variant": N1, "accepted_share": 0.9})
    no_accuracy = chosen.model_copy(update={"accuracy": None, "accepted_share": 0.1})
    other = chosen.model_copy(update={"rule": AcceptanceRule(threshold=0.5),
                                      "accepted_share": 0.2, "accuracy": 0.9})
    result = _calibration(chosen, None, [chosen, wrong_variant, no_accuracy, other])
    plot_curve(result, tmp_path / "curve.png")
    (ax,) = figures[0].axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    # only points at the focus's variant that have an accuracy, sorted by accepted share
    assert list(lines["majority_share"].get_xdata()) == [0.2, 0.4]
    assert list(lines["majority_share"].get_ydata()) == [0.9, 0.75]
    (bars,) = {c.get_label(): c for c in ax.containers}["calibrated"].lines[2]
    (segment,) = bars.get_segments()
    assert segment.ravel().tolist() == pytest.approx([0.4, 0.6, 0.4, 0.8])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "majority_share", "target 0.5", "calibrated"]


def test_the_plot_of_an_empty_curve_shows_the_papers_setting(tmp_path: Path,
                                                             figures: list[Any]) -> None:
    plot_curve(_calibration(None, None, []), tmp_path / "curve.png")
    (ax,) = figures[0].axes
    assert ax.get_title() == "cascade calibration: N=3, T=0.1, 4 labelled steps"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["target 0.5"]


# --- the CLI's tables -------------------------------------------------------------------------

def rows(table: Any) -> list[list[str]]:
    """The body rows of a rich table as printed, cell by cell."""
    console = Console(width=250, record=True, file=io.StringIO())
    console.print(table)
    return [[cell.strip() for cell in line.split("│")[1:-1]]
            for line in console.export_text().splitlines() if line.startswith("│")]


HEADER = ["", "variant", "rule", "accepted", "accuracy", "interval", "teacher-call rate",
          "cost/ep (USD)"]


def test_the_tables_name_their_columns_and_align_numbers_right() -> None:
    table = _table("a title")
    assert table.title == "a title"
    assert [c.header for c in table.columns] == HEADER
    assert [c.justify for c in table.columns] == ["left"] * 3 + ["right"] * 5


def test_the_curve_table_lists_the_focus_signal_and_marks_the_focus() -> None:
    result = calibrate(FOUR, {"r": N3}, target_accuracy=0.5, confidence=0.75,
                       steps_per_episode=2.0, bootstrap=2000)
    table = _curve_table(result, point(result, 1, "mean_logprob", -0.2))
    assert table.title == ("accepted share vs accepted-step accuracy (mean_logprob; 50% "
                           "interval)")
    low = point(result, 1, "mean_logprob", -0.9).accuracy_low
    high = point(result, 1, "mean_logprob", -0.9).accuracy_high
    assert rows(table) == [
        ["", "N=1 T=0.1", "mean_logprob >= -0.1", "25.0%", "1.000", "1.000–1.000", "75.0%",
         "0.01740"],
        ["→", "N=1 T=0.1", "mean_logprob >= -0.2", "50.0%", "1.000", "1.000–1.000", "50.0%",
         "0.01240"],
        ["", "N=1 T=0.1", "mean_logprob >= -0.9", "75.0%", "0.667", f"{low:.3f}–{high:.3f}",
         "25.0%", "0.00740"],
        ["", "N=1 T=0.1", "mean_logprob >= -1.5", "100.0%", "0.500", "0.250–0.750", "0.0%",
         "0.00240"],
    ]
    distinct = _curve_table(result, point(result, 3, "distinct_actions", 2.0))
    assert [r[0] + " " + r[2] for r in rows(distinct)] == [
        " distinct_actions <= 1", "→ distinct_actions <= 2", " distinct_actions <= 3"]


def test_a_long_curve_is_thinned_to_about_fifteen_rows_keeping_the_focus() -> None:
    curve = [_curve_point(0.5, t / 100).model_copy(update={"accepted_share": (40 - t) / 40})
             for t in range(40)]
    result = _calibration(None, None, curve)
    focus = curve[-2]  # share 2/40: an odd position once sorted by share
    shown = rows(_curve_table(result, focus))
    # every second point of the 40 by share (40 // 15 = 2: thresholds 0.39, 0.37, ...,
    # 0.01), and the focus
    assert [r[2] for r in shown] == [f"majority_share >= {t / 100:.4g}"
                                     for t in [39, 38, *range(37, 0, -2)]]
    assert [r[0] for r in shown] == ["", "→"] + [""] * 19
    assert [r[5] for r in shown][:2] == ["0.500–0.500", "0.500–0.500"]
    few = _calibration(None, None, curve[:3])
    assert len(rows(_curve_table(few, curve[0]))) == 3


# --- `agentkd calibrate` ----------------------------------------------------------------------

def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["calibrate", *args], env={"COLUMNS": "1000"})


def test_calibrate_command_prints_the_curve_the_rules_and_writes_the_config(
        tmp_path: Path, log_url: str) -> None:
    four_step_log(log_url)
    out = tmp_path / "cfg" / "cascade.json"
    out.parent.mkdir()
    result = invoke("--log", log_url, "--run", "r", "--target-accuracy", "0.7",
                    "--confidence", "0.5", "--out", str(out))
    assert result.exit_code == 0, result.output
    printed = [line for line in result.output.splitlines() if line.startswith("│")]
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in printed]
    # the curve (4 rows of mean_logprob at N=1), then the calibrated and the paper's rule
    assert [c[:3] for c in cells] == [
        ["", "N=1 T=0.1", "mean_logprob >= -0.1"],
        ["→", "N=1 T=0.1", "mean_logprob >= -0.2"],
        ["", "N=1 T=0.1", "mean_logprob >= -0.9"],
        ["", "N=1 T=0.1", "mean_logprob >= -1.5"],
        ["calibrated", "N=1 T=0.1", "mean_logprob >= -0.2"],
        ["paper rule", "N=3 T=0.1", "majority_share >= 1"],
    ]
    assert cells[4][3:] == ["50.0%", "1.000", "1.000–1.000", "50.0%", "0.01550"]
    assert cells[5][3:] == ["50.0%", "1.000", "1.000–1.000", "50.0%", "0.01650"]
    assert "4 labelled steps, 2.5 steps per episode" in result.output
    assert ("expected teacher-call rate 50.0%, cost per episode $0.01550\nwrote "
            f"{out} (load it with Distiller(cascade={str(out)!r})) and "
            f"{out.with_suffix('.png')}") in result.output
    config = json.loads(out.read_text())
    assert config["cascade"]["samples"] == 1 and config["cascade"]["temperature"] == 0.1
    assert config["cascade"]["rule"] == {"signal": "mean_logprob",
                                        "threshold": pytest.approx(-0.2)}
    assert config["calibration"]["labelled_steps"] == 4
    assert _png_size(out.with_suffix(".png")) == (780, 540)


def test_calibrate_command_prints_json_and_writes_the_plot_where_asked(
        tmp_path: Path, log_url: str) -> None:
    four_step_log(log_url)
    out, plot = tmp_path / "c.json", tmp_path / "plots" / "p.png"
    result = invoke("--log", log_url, "--run", "r", "--target-accuracy", "0.7",
                    "--confidence", "0.5", "--out", str(out), "--plot", str(plot), "--json",
                    "--bootstrap", "100", "--seed", "3")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert result.output == json.dumps(summary, indent=2) + "\n"
    assert summary == json.loads(out.read_text())["calibration"]
    assert (summary["runs"], summary["labelled_steps"], summary["min_accepted"],
            summary["steps_per_episode"], summary["problem"]) == (["r"], 4, 2, 2.5, None)
    assert summary["chosen"]["rule"] == {"signal": "mean_logprob",
                                         "threshold": pytest.approx(-0.2)}
    assert plot.exists() and not out.with_suffix(".png").exists()


def test_calibrate_command_with_no_qualifying_rule_writes_only_the_plot(
        tmp_path: Path, log_url: str) -> None:
    four_step_log(log_url)
    out = tmp_path / "cascade.json"
    result = invoke("--log", log_url, "--run", "r", "--target-accuracy", "0.75",
                    "--confidence", "0.5", "--out", str(out), "--bootstrap", "200")
    assert result.exit_code == 2
    assert not out.exists() and out.with_suffix(".png").exists()
    assert f"curve: {out.with_suffix('.png')}; no cascade config written" in result.output
    assert "no acceptance rule reaches accepted-step accuracy 0.75" in result.output
    cells = [[c.strip() for c in line.split("│")[1:-1]]
             for line in result.output.splitlines() if line.startswith("│")]
    # no rule chosen: the paper's rule is the focus, its curve shown, then its row alone
    assert [c[:3] for c in cells] == [
        ["→", "N=3 T=0.1", "majority_share >= 1"],
        ["", "N=3 T=0.1", "majority_share >= 0.6667"],
        ["", "N=3 T=0.1", "majority_share >= 0.3333"],
        ["paper rule", "N=3 T=0.1", "majority_share >= 1"],
    ]


def test_calibrate_command_does_not_create_a_missing_log(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    result = invoke("--log", f"sqlite:///{missing}", "--run", "r", "--out",
                    str(tmp_path / "c.json"))
    assert result.exit_code == 2
    assert "error:" in result.output and "no agentkd log at" in result.output
    assert not missing.exists() and not (tmp_path / "c.json").exists()
