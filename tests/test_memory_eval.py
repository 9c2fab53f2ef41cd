"""BudgetMem evaluation at scale: bootstrap intervals, the round-robin question selection,
resumable evaluation with a progress count, the per-strategy frontier plot, the wall-time
projection and the `agentkd memory eval --questions` / `agentkd memory time` commands.

Scripted LLMs (conftest's `scripted` provider) and a hashing embedder stand in for real models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import require
from test_memory import QUERY, HashEmbedder, llm_script
from typer.testing import CliRunner

from agentkd.errors import InputError
from agentkd.memory import Pipeline, Router
from agentkd.memory.data import (
    DEFAULT_LOCOMO,
    QAItem,
    Sample,
    Turn,
    load_dataset,
    select_questions,
    select_total,
)
from agentkd.memory.evaluate import (
    PolicySummary,
    baseline_policy,
    evaluate,
    frontier_plot,
    load_rows,
    pending,
    project_wall_s,
)
from agentkd.memory.metrics import bootstrap_ci, token_f1

# --- bootstrap interval ---------------------------------------------------------------


def test_bootstrap_ci_is_seeded_and_brackets_the_mean() -> None:
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 1, size=200).tolist()
    lo, hi = bootstrap_ci(values)
    assert lo < float(np.mean(values)) < hi
    assert (lo, hi) == bootstrap_ci(values)  # same seed, same interval
    # Roughly ±1.96 standard errors of a uniform's mean (sd 0.289 / sqrt(200) = 0.020).
    assert 0.06 < hi - lo < 0.10
    narrow = bootstrap_ci(values * 4)
    assert narrow[1] - narrow[0] < hi - lo  # more data, tighter interval
    assert bootstrap_ci([0.5]) == (0.5, 0.5)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0)


def test_bootstrap_ci_rejects_bad_input() -> None:
    with pytest.raises(InputError, match="no values"):
        bootstrap_ci([])
    with pytest.raises(InputError, match="level"):
        bootstrap_ci([1.0], level=1.5)
    with pytest.raises(InputError, match="resamples"):
        bootstrap_ci([1.0], resamples=0)


# --- question selection ---------------------------------------------------------------


def category_samples(sizes: list[int]) -> list[Sample]:
    """Samples whose questions cycle through categories 1-4, `sizes[i]` questions in sample i."""
    turn = [Turn("A", "hello", 1, "8 May, 2023")]
    return [Sample(f"s{i}", turn, [QAItem(f"s{i}-q{j}", f"q{j}?", "a", str(1 + j % 4))
                                   for j in range(n)])
            for i, n in enumerate(sizes)]


def test_select_total_spreads_evenly_and_grows_as_a_superset() -> None:
    samples = category_samples([10, 3, 10])
    previous: set[str] = set()
    for total in range(1, 24):
        items = select_total(samples, total)
        qids = [qa.qid for _, qa in items]
        assert len(qids) == len(set(qids)) == total
        assert previous <= set(qids)  # staged runs reuse every earlier row
        previous = set(qids)
    per = {s.sample_id: sum(1 for smp, _ in select_total(samples, 9) if smp is s)
           for s in samples}
    assert per == {"s0": 3, "s1": 3, "s2": 3}
    # Sample s1 holds 3: its shortfall goes to the others.
    per = {s.sample_id: sum(1 for smp, _ in select_total(samples, 15) if smp is s)
           for s in samples}
    assert per == {"s0": 6, "s1": 3, "s2": 6}
    with pytest.raises(InputError, match="holds 23"):
        select_total(samples, 24)
    with pytest.raises(InputError, match=">= 1"):
        select_total(samples, 0)


def test_select_total_is_round_robin_over_categories() -> None:
    samples = category_samples([12, 12])
    first = [qa.category for smp, qa in select_total(samples, 8) if smp is samples[0]]
    second = [qa.category for smp, qa in select_total(samples, 8) if smp is samples[1]]
    assert first == ["1", "2", "3", "4"]
    assert second == ["2", "3", "4", "1"]  # the second sample starts one category later
    # per-sample selection is the same rule
    assert select_questions(samples, 4) == select_total(samples, 8)


def test_locomo_test_split_gives_200_questions_over_both_conversations() -> None:
    require(DEFAULT_LOCOMO.is_file(), f"LoCoMo is not at {DEFAULT_LOCOMO} (the shared data "
                                      f"folder ../shared/data/locomo)")
    test = load_dataset("locomo", split="test")
    # 400 questions, 314 of them outside category 5 (adversarial, dropped).
    assert sum(len(s.questions) for s in test) == 314
    items = select_total(test, 200)
    assert sum(1 for s, _ in items if s.sample_id == "locomo8") == 100
    cats = [qa.category for _, qa in items]
    # Round-robin: all 20 open-domain questions, then the other three categories evenly.
    assert cats.count("3") == 20
    assert min(cats.count(c) for c in "124") >= 55


# --- resumable evaluation -------------------------------------------------------------


@pytest.fixture
def eval_pipeline(scripted: Any, tmp_path: Path) -> Pipeline:
    scripted.scripts["scripted/student"] = llm_script
    return Pipeline({"high_model": "scripted/student", "answer_model": "scripted/student"},
                    embedder=HashEmbedder(), cache_dir=tmp_path / "cache")


def two_questions() -> list[tuple[Sample, QAItem]]:
    turns = [Turn("Caroline", "I am researching adoption agencies.", 1, "8 May, 2023"),
             Turn("Melanie", "We went camping last week.", 2, "1 June, 2023")]
    sample = Sample("s0", turns, [QAItem("s0-q0", QUERY, "adoption agencies", "4"),
                                  QAItem("s0-q1", "When did Melanie go camping?", "May 2023",
                                         "2")])
    return [(sample, q) for q in sample.questions]


def f1(qa: QAItem, answer: str) -> float:
    return token_f1(answer, qa.answer)


class Interrupt(Exception):
    pass


def test_interrupted_evaluation_resumes_without_redoing_rows(eval_pipeline: Pipeline,
                                                             scripted: Any,
                                                             tmp_path: Path) -> None:
    items = two_questions()
    policies = {b: (lambda qid, b=b: baseline_policy(b, qid)) for b in ("all-low", "all-high")}
    rows = tmp_path / "rows.jsonl"
    seen: list[str] = []

    def stop_after_three(note: str) -> None:
        seen.append(note)
        if len(seen) == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        evaluate(eval_pipeline, items, policies, f1, rows, progress=stop_after_three)
    assert len(load_rows(rows)) == 3 and pending(load_rows(rows), items, policies) == 1
    calls = len(scripted.received)
    again: list[str] = []
    summaries = evaluate(eval_pipeline, items, policies, f1, rows, progress=again.append)
    assert len(again) == 1 and again[0].startswith("all-high s0-q1 ")  # only the missing row
    assert again[0].endswith("s")  # the note carries the row's wall seconds
    assert len(load_rows(rows)) == 4 and pending(load_rows(rows), items, policies) == 0
    assert len(scripted.received) > calls
    calls = len(scripted.received)
    assert evaluate(eval_pipeline, items, policies, f1, rows) == summaries
    assert len(scripted.received) == calls  # a finished evaluation calls nothing
    high = summaries["all-high"]
    assert high.n == 2 and high.score_ci[0] <= high.score <= high.score_ci[1]
    assert high.cost_per_query > summaries["all-low"].cost_per_query
    assert high.wall_s_per_query > 0 and high.latency_s_per_query > 0


# --- plot and projection --------------------------------------------------------------


def summary(name: str, score: float, cost: float, lam: float | None = None) -> PolicySummary:
    return PolicySummary(name=name, n=10, score=score, cost_per_query=cost,
                         score_ci=(score - 0.05, score + 0.04), lam=lam)


def test_frontier_plot_per_strategy_with_intervals(tmp_path: Path) -> None:
    points = [summary("all-low", 0.2, 1e-6), summary("all-mid", 0.3, 2e-6),
              summary("all-high", 0.35, 5e-6), summary("random", 0.25, 3e-6),
              summary("router:r.pt@abc", 0.33, 2.5e-6, lam=1.0)]
    one = frontier_plot(points, tmp_path / "one.png")
    grid = frontier_plot({"implementation": points, "capacity": points[:3]},
                         tmp_path / "grid.png", title="BudgetMem")
    assert one.stat().st_size > 1000 and grid.stat().st_size > one.stat().st_size


def test_project_wall_s_counts_routers_at_the_fixed_tiers_mean() -> None:
    seconds = {"all-low": 2.0, "all-mid": 4.0, "all-high": 9.0, "random": 5.0}
    assert project_wall_s(seconds, 200, routers=3) == pytest.approx(200 * (20.0 + 3 * 5.0))
    assert project_wall_s(seconds, 0) == 0.0
    with pytest.raises(ValueError):
        project_wall_s(seconds, -1)


# --- CLI ------------------------------------------------------------------------------


def hotpot_file(tmp_path: Path, n: int) -> Path:
    data = tmp_path / "hotpot.json"
    data.write_text(json.dumps([
        {"_id": f"h{i}", "question": f"{QUERY[:-1]} (case {i})?", "answer": "adoption agencies",
         "type": "bridge",
         "context": [["Caroline", ["Caroline is researching adoption agencies."]],
                     ["Melanie", ["Melanie loves pottery and camping."]]]} for i in range(n)]))
    return data


@pytest.fixture
def cli_env(tmp_path: Path, scripted: Any, monkeypatch: Any) -> tuple[Path, Path]:
    """A HotpotQA-format file of 4 questions and a config on the scripted model."""
    from agentkd.retrieval import embedder as emb

    monkeypatch.setitem(emb._cache, "hash-embedder", HashEmbedder())  # type: ignore[arg-type]
    scripted.scripts["scripted/student"] = llm_script
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"high_model": "scripted/student", "reasoning_model":
                               "scripted/student", "answer_model": "scripted/student",
                               "capacity_models": dict.fromkeys(("low", "mid", "high"),
                                                                "scripted/student"),
                               "embedding_model": "hash-embedder"}))
    return hotpot_file(tmp_path, 4), cfg


def test_cli_eval_questions_save_and_staged_resume(tmp_path: Path, cli_env: tuple[Path, Path],
                                                   scripted: Any) -> None:
    from agentkd.cli import app

    data, cfg = cli_env
    runner = CliRunner()
    base = ["memory", "eval", "--data", "hotpotqa", "--data-path", str(data), "--config",
            str(cfg), "--cache-dir", str(tmp_path / "c"), "--baselines", "all-low,all-high"]
    res = runner.invoke(app, [*base, "--questions", "2", "--strategy", "reasoning"])
    assert res.exit_code == 0, res.output
    assert "95% CI" in res.output and "reasoning tiers" in res.output
    calls = len(scripted.received)
    save = tmp_path / "out" / "frontier.json"
    res = runner.invoke(app, [*base, "--questions", "3", "--strategy", "reasoning", "--json",
                              "--save", str(save)])
    assert res.exit_code == 0, res.output
    assert "resuming: 4 of 6 rows finished" in res.output
    report = json.loads(save.read_text())
    assert report["strategy"] == "reasoning" and report["questions"] == 3
    high = report["policies"]["all-high"]
    assert high["n"] == 3 and len(high["score_ci"]) == 2
    assert {"cost_per_query", "latency_s_per_query", "wall_s_per_query"} <= set(high)
    # Only the third question's two rows ran (the reasoning High tier makes 2 calls a module).
    assert 0 < len(scripted.received) - calls <= 2 * 12
    res = runner.invoke(app, [*base, "--questions", "5"])
    assert res.exit_code == 2 and "asked for 5 questions, the data holds 4" in res.output
    res = runner.invoke(app, [*base, "--strategy", "sideways"])
    assert res.exit_code == 2 and "strategy" in res.output and "Traceback" not in res.output


def test_cli_eval_refuses_a_router_of_another_strategy(tmp_path: Path,
                                                       cli_env: tuple[Path, Path]) -> None:
    from agentkd.cli import app

    data, cfg = cli_env
    router = Router(meta={"config": {"strategy": "implementation"}, "lambda": 1.0})
    path = router.save(tmp_path / "router.pt")
    res = CliRunner().invoke(app, ["memory", "eval", "--data", "hotpotqa", "--data-path",
                                   str(data), "--config", str(cfg), "--router", str(path),
                                   "--strategy", "capacity"])
    assert res.exit_code == 2 and "trained for the 'implementation' strategy" in res.output


def test_cli_time_projects_the_run(cli_env: tuple[Path, Path]) -> None:
    from agentkd.cli import app

    data, cfg = cli_env
    res = CliRunner().invoke(app, ["memory", "time", "--data", "hotpotqa", "--data-path",
                                   str(data), "--config", str(cfg), "--strategy", "capacity",
                                   "--questions", "2", "--project", "200", "--routers", "3",
                                   "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{"):])
    seconds = report["wall_s_per_question"]
    assert set(seconds) == {"all-low", "all-mid", "all-high", "random"}
    assert report["timed_questions"] == 2 and report["strategy"] == "capacity"
    assert res.output.count("row done: ") == 8  # printed as they finish (a cut run tells too)
    assert report["projected_wall_s"] == pytest.approx(project_wall_s(seconds, 200, 3))


# --- the benchmark driver -------------------------------------------------------------


def load_benchmark() -> Any:
    import importlib.util

    script = Path(__file__).parents[1] / "benchmarks" / "memory.py"
    spec = importlib.util.spec_from_file_location("memory_benchmark", script)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_stages_share_one_cache_and_collect_the_largest(tmp_path: Path) -> None:
    bench = load_benchmark()
    out = tmp_path / "run"
    cmd = bench.eval_command(out, "capacity", 100)
    assert cmd[cmd.index("--questions") + 1] == "100"
    assert cmd[cmd.index("--strategy") + 1] == "capacity"
    assert cmd[cmd.index("--cache-dir") + 1] == str(out / "memory-cache")
    assert cmd.count("--router") == 3
    train = bench.train_command(out, "capacity", 2)
    assert train[train.index("--out") + 1] == str(out / "capacity" / "router.pt")
    points = {"all-low": vars(summary("all-low", 0.2, 1e-6)),
              "all-high": vars(summary("all-high", 0.3, 4e-6)),
              "router:r@1": vars(summary("router:r@1", 0.28, 2e-6, lam=1.0))}
    for q in (40, 100):
        path = bench.stage_file(out, "capacity", q)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"questions": q, "strategy": "capacity",
                                    "policies": points}))
    reports = bench.collect(out, ["capacity", "reasoning"], [40, 100, 200])
    assert set(reports) == {"capacity"} and reports["capacity"]["questions"] == 100
    js, png = bench.write_results(reports, tmp_path / "results")
    assert json.loads(js.read_text())["capacity"]["questions"] == 100
    assert png.stat().st_size > 1000
