"""The runnable examples under examples/ run, and tell the truth about what they did."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_decorate_existing_loop(tmp_path):
    summaries = load("decorate_existing_loop").main(tmp_path)
    by_mode = {s.mode: s for s in summaries}
    assert by_mode["collect"].teacher_call_rate == 1.0
    # The mocked student always agrees with itself, so the teacher is never called.
    assert by_mode["distill"].teacher_call_rate == 0.0
    assert 0 < by_mode["distill"].relative_cost < 1


def test_alfworld_react_collect(tmp_path):
    (summary,) = load("alfworld_react").main([
        "--mode", "collect", "--games", "2", "--log", f"sqlite:///{tmp_path / 'ex.db'}",
        "--demos", str(tmp_path / "demos")])
    assert summary.episodes == 2 and summary.success_rate == 1.0
    assert summary.label == "priced oracle teacher" and summary.cost_per_episode > 0
    from agentkd.retrieval import DemoStore

    with DemoStore.open(tmp_path / "demos") as store:
        assert store.stats()["episodes"] == 2 and len(store) == summary.steps_per_episode * 2
