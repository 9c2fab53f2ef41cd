"""Agent distillation on ALFWorld: a small student's next-action match before and after SFT.

Collects the teacher's trajectories on stratified train games and on held-out valid_seen
games (one log), exports both, fine-tunes the base with LoRA on the train export and scores
base and tuned models on the held-out steps (next-action exact match against the teacher,
greedy). Both are then scored again as agentkd serves them (the base GGUF and the tuned
merged GGUF through the local llama.cpp backend), which also measures their latency, with
the matches broken down by the teacher's verb. Resumable: rerun with the
same --workdir and finished stages are reused (training resumes from its last checkpoint).

    python benchmarks/sft.py --train-games 200 --eval-games 12 --epochs 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Keep benchmarks/ off the import path: benchmarks/alfworld.py would shadow the alfworld package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from agentkd.envs.bench import BenchConfig
from agentkd.envs.cli import run_with_progress
from agentkd.errors import AgentKDError
from agentkd.export import ExportFilters, export_dataset, load_card
from agentkd.train import TrainConfig, TrainReport, count_targets, evaluate_model, train


def collect(log: str, split: str, games: int, run_id: str, workers: int) -> None:
    run_with_progress(BenchConfig(mode="teacher", split=split, episodes=games, stratify=True,
                                  workers=workers, log=log, run=run_id, resume=True,
                                  max_steps=50), f"teacher on {split}")


def export(log: str, run_id: str, out: Path, granularity: str) -> dict[str, object]:
    if not out.is_file():
        export_dataset(log, run_id, out, filters=ExportFilters(
            val_fraction=0.0, granularity=granularity))  # type: ignore[arg-type]
    card = load_card(out)
    assert card is not None
    return {"file": str(out), "episodes": card.episodes_kept, "steps": card.steps_trained,
            "records": card.splits["train"].records, "tokens": card.tokens.total}


def served_eval(data: Path, model: str, limit: int) -> dict[str, object]:
    """Next-action match of `model` as agentkd serves it (litellm → llama.cpp)."""
    total = count_targets(data, limit)
    with Progress(TextColumn(model), BarColumn(), MofNCompleteColumn()) as progress:
        task = progress.add_task("evaluate", total=total)
        result = evaluate_model(data, model, limit=limit,
                                on_target=lambda: progress.advance(task))
    return result.model_dump()


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path(".agentkd/bench-sft"))
    parser.add_argument("--base", default="local/smollm2-135m")
    parser.add_argument("--train-games", type=positive, default=200)
    parser.add_argument("--eval-games", type=positive, default=12)
    parser.add_argument("--eval-limit", type=positive, default=150,
                        help="held-out actions scored per model")
    parser.add_argument("--granularity", default="episode", choices=["episode", "step"])
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--workers", type=positive, default=2)
    args = parser.parse_args()
    console = Console()
    try:
        run(args, console)
    except AgentKDError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise SystemExit(2) from None


def run(args: argparse.Namespace, console: Console) -> None:
    args.workdir.mkdir(parents=True, exist_ok=True)
    log = f"sqlite:///{(args.workdir / 'log.db').resolve()}"
    collect(log, "train", args.train_games, "sft-train", args.workers)
    collect(log, "valid_seen", args.eval_games, "sft-heldout", args.workers)
    data = args.workdir / f"train-{args.granularity}.jsonl"
    heldout = args.workdir / "heldout.jsonl"
    datasets = {"train": export(log, "sft-train", data, args.granularity),
                "heldout": export(log, "sft-heldout", heldout, "episode")}
    console.print(datasets)

    out = args.workdir / f"student-{args.granularity}-{args.epochs:g}ep"
    report_file = out / "train_report.json"
    if report_file.is_file():
        report = TrainReport.model_validate_json(report_file.read_text())
    else:
        report = train(TrainConfig(data=data, base=args.base, out=out, eval_data=heldout,
                                   epochs=args.epochs, lr=args.lr, max_length=args.max_length,
                                   eval_limit=args.eval_limit),
                       log=console.print, evaluate_base=True)
    served = {"base": served_eval(heldout, args.base, args.eval_limit)} \
        if args.base.startswith("local/") else {}
    if report.gguf:
        served["tuned"] = served_eval(heldout, f"local/{report.gguf}", args.eval_limit)

    result = {"args": {k: str(v) for k, v in vars(args).items()}, "datasets": datasets,
              "train_seconds": report.train_seconds, "optimizer_steps": report.steps,
              "eval_loss_before": report.eval_loss_before,
              "eval_loss_after": report.eval_loss_after,
              "base": report.base_eval.model_dump() if report.base_eval else None,
              "tuned": report.tuned_eval.model_dump() if report.tuned_eval else None,
              "served": served}
    path = Path(__file__).parent / "results" / "sft.json"
    path.write_text(json.dumps(result, indent=2))
    table = Table(title=f"next-action match, held-out valid_seen steps ({args.base})")
    for column in ("model", "matched", "match", "no action", "s/action", "by teacher verb"):
        table.add_column(column)
    for name, scores in (("base (transformers)", result["base"]),
                         ("tuned (transformers)", result["tuned"]),
                         ("base, served (llama.cpp)", served.get("base")),
                         ("tuned, served (llama.cpp)", served.get("tuned"))):
        if isinstance(scores, dict):
            verbs = " ".join(f"{verb} {hit}/{total}"
                             for verb, (hit, total) in scores.get("by_verb", {}).items())
            table.add_row(name, f"{scores['matched']}/{scores['targets']}",
                          f"{scores['accuracy']:.1%}", str(scores["no_action"]),
                          f"{scores['seconds_per_action']:.2f}", verbs)
    console.print(table)
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
