"""A run's learning curve (agentkd.learning) from a real grown-store distill run."""

from __future__ import annotations

import pytest
from conftest import grown_distill_run

import agentkd
from agentkd.learning import learning_curve, plot_learning_curves


def test_the_curve_follows_the_teacher_calls_a_growing_store_saves(scripted, log_url,
                                                                   tmp_path):
    kd = grown_distill_run(scripted, log_url, tmp_path / "grown", "curve",
                           [("a", None), ("b", None), ("c", None)])

    curve = learning_curve(kd.log, "curve", window=2)
    assert [(p.served, p.task_id, p.teacher_steps, p.steps) for p in curve] == [
        (1, "a", 2, 2), (2, "b", 0, 2), (3, "c", 0, 2)]
    assert [p.teacher_call_rate for p in curve] == [1.0, 0.0, 0.0]
    assert [p.mean_teacher_call_rate for p in curve] == [1.0, 0.5, 0.0]
    costs = [e.cost_usd for e in kd.log.episodes("curve")]
    assert [p.cost_usd for p in curve] == costs
    assert curve[1].mean_cost_usd == pytest.approx((costs[0] + costs[1]) / 2)
    assert curve[0].cost_usd > curve[1].cost_usd  # the teacher's calls cost more

    png = plot_learning_curves({"grown": curve}, tmp_path / "curve.png", title="t", window=2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_window_below_one_is_refused(log_url):
    with pytest.raises(ValueError, match="window must be >= 1"):
        learning_curve(agentkd.TrajectoryLog(log_url), "none", window=0)
