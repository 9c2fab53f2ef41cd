"""Paper rule vs calibrated rule on ALFWorld: the measured runs' table (issue 8).

Reads runs already in a log (played with `agentkd bench alfworld ... --shadow 1.0`, one with
the paper's rule and one with `--cascade cascade.json`) and prints, per run: episodes,
success, teacher-call rate, accepted-step accuracy over the shadow labels, and cost per
episode, both as spent and without the shadow calls (what the rule costs once calibration
labelling stops). Writes benchmarks/results/calibration.json.

    python benchmarks/calibration.py --log sqlite:///.agentkd/calib/log.db \\
        --run cmp-paper-valid_seen --run cmp-calibrated-valid_seen
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from agentkd.log import Episode, LLMCall, TrajectoryLog
from agentkd.report import FINISHED, run_summaries

RESULTS = Path(__file__).parent / "results" / "calibration.json"


def measure(log: TrajectoryLog, run_ids: list[str]) -> list[dict[str, object]]:
    rows = []
    for summary in run_summaries(log, run_ids):
        with log.session() as s:
            shadow = s.execute(
                select(func.coalesce(func.sum(LLMCall.cost_usd), 0.0))
                .join(Episode, Episode.id == LLMCall.episode_id)
                .where(LLMCall.run_id == summary.run_id, LLMCall.role == "shadow",
                       Episode.status.in_(FINISHED))).scalar_one()
        n = summary.episodes
        rows.append({
            "run": summary.run_id, "episodes": n, "success_rate": summary.success_rate,
            "steps_per_episode": summary.steps_per_episode,
            "teacher_call_rate": summary.teacher_call_rate,
            "accepted_accuracy": summary.accepted_accuracy,
            "labelled_accepted": summary.labelled_accepted,
            "cost_per_episode": summary.cost_per_episode,
            "cost_per_episode_without_shadow": (
                (summary.cost_per_episode or 0.0) - float(shadow) / n if n else None),
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log", required=True)
    parser.add_argument("--run", action="append", required=True)
    parser.add_argument("--cascade", type=Path, help="the calibrated config, quoted in the JSON")
    args = parser.parse_args()
    rows = measure(TrajectoryLog(args.log), args.run)
    table = Table(title="ALFWorld: paper rule vs calibrated rule")
    for column in ("run", "episodes", "success", "steps/ep", "teacher-call rate",
                   "accepted acc. (labelled)", "cost/ep", "cost/ep w/o shadow"):
        table.add_column(column)

    def fmt(value: object, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    for r in rows:
        table.add_row(str(r["run"]), str(r["episodes"]), fmt(r["success_rate"], ".2f"),
                      fmt(r["steps_per_episode"], ".1f"), fmt(r["teacher_call_rate"], ".1%"),
                      f"{fmt(r['accepted_accuracy'], '.1%')} ({r['labelled_accepted']})",
                      fmt(r["cost_per_episode"], ".5f"),
                      fmt(r["cost_per_episode_without_shadow"], ".5f"))
    Console().print(table)
    body: dict[str, object] = {"log": args.log, "runs": rows}
    if args.cascade is not None:
        body["cascade"] = json.loads(args.cascade.read_text())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
