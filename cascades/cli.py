"""`agentkd calibrate`: fit the cascade's acceptance rule on a run's shadow-labelled steps."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from agentkd.cascades.calibration import Calibration, CurvePoint, calibrate_log, plot_curve
from agentkd.config import save_cascade
from agentkd.errors import AgentKDError

console = Console()
_CURVE_ROWS = 15


def _fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _row(name: str, p: CurvePoint) -> list[str]:
    return [name, f"N={p.variant.samples} T={p.variant.temperature:g}",
            f"{p.rule.signal} {'<=' if p.rule.signal == 'distinct_actions' else '>='} "
            f"{p.rule.threshold:.4g}",
            f"{p.accepted_share:.1%}", _fmt(p.accuracy, ".3f"),
            f"{_fmt(p.accuracy_low, '.3f')}–{_fmt(p.accuracy_high, '.3f')}",
            f"{p.teacher_call_rate:.1%}", f"{p.cost_per_episode:.5f}"]


def _table(title: str) -> Table:
    table = Table(title=title)
    for column in ("", "variant", "rule", "accepted", "accuracy", "interval",
                   "teacher-call rate", "cost/ep (USD)"):
        table.add_column(column, justify="left" if column in ("", "variant", "rule")
                         else "right")
    return table


def _curve_table(result: Calibration, focus: CurvePoint) -> Table:
    """The curve of `focus`'s signal at its variant, thinned to a readable length."""
    points = sorted((p for p in result.curve if p.variant == focus.variant
                     and p.rule.signal == focus.rule.signal), key=lambda p: p.accepted_share)
    step = max(1, len(points) // _CURVE_ROWS)
    shown = {id(p) for p in points[::step]} | {id(focus)}
    interval = f"{1 - 2 * (1 - result.confidence):.0%} interval"
    table = _table(f"accepted share vs accepted-step accuracy ({focus.rule.signal}; "
                   f"{interval})")
    for p in points:
        if id(p) in shown:
            table.add_row(*_row("→" if p is focus else "", p))
    return table


def calibrate(
    log: str = typer.Option("sqlite:///agentkd.db", help="SQLAlchemy URL of the log."),
    run: list[str] = typer.Option(..., help="Run id with shadow-labelled steps (repeatable: "
                                            "runs with other N or temperature are variants)."),
    target_accuracy: float = typer.Option(0.95, help="Accepted-step accuracy to reach "
                                                     "(vs the teacher's actions)."),
    confidence: float = typer.Option(0.95, help="One-sided confidence that the accuracy "
                                                "reaches the target (bootstrap)."),
    out: Path = typer.Option(Path("cascade.json"), help="Cascade config to write; load it "
                             "with Distiller(cascade='cascade.json')."),
    plot: Path = typer.Option(None, help="PNG of the curve (default: OUT with .png)."),
    bootstrap: int = typer.Option(2000, help="Bootstrap resamples."),
    seed: int = typer.Option(0, help="Bootstrap seed."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Fit the acceptance rule (signal, threshold, N, temperature) that reaches the target
    accepted-step accuracy at the lowest expected cost, and write it as a cascade config."""
    from agentkd.log import TrajectoryLog

    try:
        with console.status("fitting acceptance rules on the labelled steps …"):
            result = calibrate_log(TrajectoryLog(log, create=False), run,
                                   target_accuracy=target_accuracy, confidence=confidence,
                                   bootstrap=bootstrap, seed=seed, require=False)
        # The curve is worth seeing even when no rule qualifies: it shows how far off it is.
        png = plot_curve(result, plot or out.with_suffix(".png"))
        if result.chosen is not None:
            save_cascade(out, result.cascade(), result.summary())
    except AgentKDError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps(result.summary(), indent=2))
    else:
        _print_result(result, out, png)
    if result.chosen is None:
        console.print(f"[red]error:[/red] {result.problem}")
        raise typer.Exit(2)


def _print_result(result: Calibration, out: Path, png: Path) -> None:
    focus = result.focus()
    if focus is not None:
        console.print(_curve_table(result, focus))
    summary = _table(f"{result.labelled_steps} labelled steps, "
                     f"{result.steps_per_episode:.1f} steps per episode")
    for name, point in (("calibrated", result.chosen), ("paper rule", result.paper_rule)):
        if point is not None:
            summary.add_row(*_row(name, point))
    console.print(summary)
    chosen = result.chosen
    if chosen is None:
        console.print(f"curve: {png}; no cascade config written", highlight=False)
        return
    console.print(f"expected teacher-call rate {chosen.teacher_call_rate:.1%}, cost per "
                  f"episode ${chosen.cost_per_episode:.5f}\nwrote {out} (load it with "
                  f"Distiller(cascade={str(out)!r})) and {png}", highlight=False)
