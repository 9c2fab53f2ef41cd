"""examples/gateway_quickstart.py runs and tells the truth about what it did."""

from __future__ import annotations

from conftest import importable, require
from test_examples import load

require(importable("fastapi") and importable("openai") and importable("prometheus_client"),
        "the gateway example needs the gateway extra: pip install -e '.[gateway,dev]'")


def test_gateway_quickstart(tmp_path, capsys):
    (summary,) = load("gateway_quickstart").main(tmp_path)
    assert (summary.episodes, summary.success_rate, summary.teacher_call_rate) == (2, 1.0, 0.0)
    assert summary.steps_per_episode == 3 and summary.cost_per_episode > 0
    out = capsys.readouterr().out
    assert "kitchen-1 steps served by ['student', 'student', 'student']" in out
