"""The report table: every number readable on a narrow terminal as well as a wide one."""

from __future__ import annotations

from rich.console import Console

from agentkd.report import RunSummary, summary_table


def _summary(mode: str, accepted: float | None = None) -> RunSummary:
    return RunSummary(run_id=f"demo-20261127-033130-{mode}", mode=mode, teacher="alfworld/expert",
                      student=None if mode == "teacher" else "local/qwen2.5-coder-1.5b",
                      label="priced oracle teacher", episodes=2, success_rate=0.5,
                      steps_per_episode=7.5, teacher_call_rate=0.1, cost_per_episode=0.01081,
                      total_cost=0.02162, relative_cost=0.28, break_even_episodes=54.0,
                      labelled_accepted=5 if accepted is not None else 0,
                      accepted_accuracy=accepted)


def _render(width: int, summaries: list[RunSummary]) -> str:
    console = Console(width=width, record=True)
    console.print(summary_table(summaries, width=console.width))
    return console.export_text()


def test_narrow_terminal_gets_every_number_unwrapped_and_the_models_in_the_caption():
    text = _render(80, [_summary("teacher"), _summary("distill")])
    assert max(len(line) for line in text.splitlines()) <= 80
    for cell in ("distill", "0.50", "7.5", "10.0%", "0.01081", "0.28×", "54", "break-even"):
        assert cell in text
    assert "…" not in text
    caption = " ".join(text.split())  # the caption wraps at word boundaries
    assert "student: local/qwen2.5-coder-1.5b" in caption
    assert "alfworld/expert (priced oracle teacher)" in caption
    assert "accepted" not in text  # no run has shadow labels


def test_labelled_runs_show_accepted_accuracy_in_both_layouts():
    for width in (80, 250):
        text = _render(width, [_summary("distill", accepted=0.4)])
        assert "40.0% (5)" in text


def test_wide_terminal_keeps_run_ids_and_models_as_columns():
    text = _render(250, [_summary("distill")])
    assert "demo-20261127-033130-distill" in text
    assert "teacher-call rate" in text
