"""`agentkd memory ...`: build the cached rollout table, train routers with PPO, evaluate.

    agentkd memory train --data locomo --lambda 0.5 --out router.pt
    agentkd memory eval --router router.pt --questions 200
    agentkd memory time --strategy capacity --questions 1 --project 200 --routers 3

`train` and `eval` are interruptible (Ctrl-C) and resumable: module calls and per-query
outcomes live in a SQLite rollout cache (default: `memory-cache/` beside the router file) and
eval rows in a JSONL file there (one per pipeline config and scorer, keyed by policy and
question, so a larger `--questions` reuses every row of a smaller one), so rerunning the same
command continues where it stopped. A λ sweep re-reads the table and costs no LLM calls.
`time` runs the fixed-tier baselines on a few questions in a scratch cache and projects the
wall time of a full evaluation from the seconds each took.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from agentkd.errors import AgentKDError, ConfigError

memory_app = typer.Typer(help="BudgetMem: tiered memory modules with an RL-trained router.",
                         no_args_is_help=True)
console = Console()


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def _progress() -> Progress:
    # Rows take seconds to minutes each: the speed behind the ETA is averaged over the last
    # hour, not rich's default 30 s (which would hold at most one row and show no ETA).
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    TextColumn("{task.fields[note]}"), console=console,
                    speed_estimate_period=3600)


def ensure_models(models: set[str]) -> None:
    """Register the offline `local/...` provider when a configured model needs it."""
    if any(m.startswith("local/") for m in models):
        try:
            from agentkd import local_models
        except ImportError as exc:
            raise ConfigError(f"local models need agentkd.local_models ({exc}); "
                              "pip install 'agentkd[local]'") from None
        local_models.register()


def _config(config_file: Path | None, overrides: dict[str, Any],
            base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The config file's settings (else `base`), with the non-None `overrides` on top."""
    data: dict[str, Any] = dict(base or {})
    if config_file is not None:
        if not config_file.is_file():
            raise ConfigError(f"memory config file not found: {config_file}")
        try:
            loaded = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise ConfigError(f"memory config {config_file} is not valid JSON: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"memory config {config_file} must be a JSON object of settings")
        data = loaded
    data.update({k: v for k, v in overrides.items() if v is not None})
    return data


def _scorer(judge_model: str | None) -> tuple[Any, str]:
    from agentkd.memory.metrics import judge_score, token_f1

    if judge_model:
        def judge(qa: Any, answer: str) -> float:
            return judge_score(judge_model, qa.question, answer, qa.answer)[0]
        return judge, f"judge:{judge_model}"
    return (lambda qa, answer: token_f1(answer, qa.answer)), "f1"


def _out_paths(out: Path, lambdas: list[float]) -> list[Path]:
    if len(lambdas) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-lambda{lam:g}{out.suffix}") for lam in lambdas]


@memory_app.command()
def train(
    data: str = typer.Option("locomo", help="locomo | longmemeval | hotpotqa."),
    data_path: Path = typer.Option(None, help="Dataset JSON (LoCoMo defaults to shared/data)."),
    lambdas: list[float] = typer.Option([0.5], "--lambda", help="Cost weight λ (repeatable: "
                                        "a sweep writes <out>-lambda<λ>.pt per value)."),
    out: Path = typer.Option(Path("router.pt"), help="Router file to write."),
    per_sample: int = typer.Option(2, help="Training questions per conversation/sample, "
                                   "round-robin over categories (0 = all)."),
    cache_dir: Path = typer.Option(None, help="Rollout cache folder (default: memory-cache/ "
                                   "beside --out)."),
    config_file: Path = typer.Option(None, "--config", help="MemoryConfig as JSON."),
    strategy: str = typer.Option(None, help="implementation | capacity | reasoning."),
    high_model: str = typer.Option(None, help="LLM of the High tier (implementation)."),
    reasoning_model: str = typer.Option(None, help="LLM of every tier (reasoning)."),
    answer_model: str = typer.Option(None, help="LLM of the answer call."),
    judge_model: str = typer.Option(None, help="Score with an LLM judge instead of token F1."),
    iterations: int = typer.Option(150, help="PPO iterations (batches)."),
    seed: int = typer.Option(0),
) -> None:
    """Build (or resume) the cached rollout table, then train one router per λ with PPO."""
    from agentkd.memory.data import load_dataset, select_questions
    from agentkd.memory.pipeline import Pipeline
    from agentkd.memory.ppo import PPOConfig, greedy_tiers, train_router
    from agentkd.memory.rollouts import (
        Reward,
        RolloutCache,
        build_table,
        pending_runs,
        variants,
    )

    try:
        cfg = _config(config_file, {"strategy": strategy, "high_model": high_model,
                                    "reasoning_model": reasoning_model,
                                    "answer_model": answer_model})
        pipeline_cache = cache_dir or out.parent / "memory-cache"
        pipeline = Pipeline(cfg, cache_dir=pipeline_cache)
        ensure_models(pipeline.config.models() | ({judge_model} if judge_model else set()))
        split = "train" if data == "locomo" else "all"
        samples = load_dataset(data, data_path, split=split)
        items = select_questions(samples, per_sample or None)
        scorer, scorer_name = _scorer(judge_model)
        console.print(f"{len(items)} training questions from {len(samples)} samples; "
                      f"rollout cache {pipeline_cache / 'rollouts.sqlite'}")
        with RolloutCache(pipeline_cache / "rollouts.sqlite") as cache, _progress() as bar:
            total = len(items) * len(variants())
            left = pending_runs(pipeline, cache, items, scorer_name)
            task = bar.add_task("rollout table", total=total, completed=total - left, note="")
            table = build_table(pipeline, cache, items, scorer, scorer_name,
                                progress=lambda note: bar.update(task, advance=1, note=note))
        paths = _out_paths(out, lambdas)
        for lam, path in zip(lambdas, paths, strict=True):
            reward = Reward(table, lam)
            with _progress() as bar:
                task = bar.add_task(f"PPO λ={lam:g}", total=iterations, note="")
                router, history = train_router(
                    table, reward, PPOConfig(iterations=iterations, seed=seed),
                    progress=lambda it, r, t=task, b=bar: b.update(t, advance=1,
                                                                  note=f"reward {r:.3f}"))
            router.meta.update({"config": pipeline.config.model_dump(), "data": data,
                                "scorer": scorer_name, "per_sample": per_sample})
            router.save(path)
            tiers = greedy_tiers(router, table)
            est_score = sum(float(q.combo_score(t)) for q, t in zip(table, tiers, strict=True))
            est_cost = sum(float(q.combo_cost(t)) for q, t in zip(table, tiers, strict=True))
            console.print(f"λ={lam:g}: saved {path} (α={reward.alpha:.3f}; train-table estimate "
                          f"score {est_score / len(table):.3f}, cost/query "
                          f"${est_cost / len(table):.3g}; greedy reward "
                          f"{history.greedy_reward[0]:.3f} → {history.greedy_reward[-1]:.3f})")
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: rerun the same command to resume "
                      "(the rollout cache keeps everything finished)")
        raise typer.Exit(130) from None
    except AgentKDError as exc:
        _fail(str(exc))


def _items(data: str, data_path: Path | None, per_sample: int,
           questions: int | None) -> tuple[list[Any], str]:
    """The test questions: `questions` in all spread over the samples, else `per_sample` each
    (0 = all), round-robin over categories either way; and the split they come from."""
    from agentkd.memory.data import load_dataset, select_questions, select_total

    split = "test" if data == "locomo" else "all"
    samples = load_dataset(data, data_path, split=split)
    if questions is not None:
        return select_total(samples, questions), split
    return select_questions(samples, per_sample or None), split


def _check_strategy(routers: list[tuple[Path, Any]], strategy: str) -> None:
    """A router only knows the tiers of the strategy it was trained under."""
    for path, router in routers:
        trained = (router.meta.get("config") or {}).get("strategy", "implementation")
        if trained != strategy:
            raise ConfigError(f"{path} was trained for the {trained!r} strategy, this evaluation "
                              f"runs {strategy!r}; train a router per strategy")


def _print_summaries(summaries: dict[str, Any], title: str, tiers: bool = True) -> None:
    """The per-policy table; `tiers` adds how often each module ran at each tier."""
    table = Table(title=title)
    for col in ("policy", "λ", "n", "F1", "95% CI", "cost/query (USD)", "tokens/query",
                "latency s/query", "wall s/query"):
        table.add_column(col)
    if tiers:
        table.add_column("tiers (filter entity temporal topic summary: L/M/H)")
    for name, s in summaries.items():
        cells = [name, "" if s.lam is None else f"{s.lam:g}", str(s.n), f"{s.score:.3f}",
                 f"[{s.score_ci[0]:.3f}, {s.score_ci[1]:.3f}]", f"{s.cost_per_query:.3g}",
                 f"{s.tokens_per_query:.0f}", f"{s.latency_s_per_query:.1f}",
                 f"{s.wall_s_per_query:.1f}"]
        if tiers:
            cells.append(" ".join("/".join(str(s.tier_mix.get(m, {}).get(t, 0))
                                           for t in ("low", "mid", "high"))
                                  for m in ("filter", "entity", "temporal", "topic", "summary")))
        table.add_row(*cells)
    console.print(table)


def _baselines(baselines: str) -> dict[str, Any]:
    from agentkd.memory.evaluate import BASELINES, baseline_policy

    names = [b.strip() for b in baselines.split(",") if b.strip()]
    bad = [b for b in names if b not in BASELINES]
    if bad:
        raise ConfigError(f"unknown baselines {bad}; choose from {', '.join(BASELINES)}")
    return {b: partial(baseline_policy, b) for b in names}


def _run_eval(pipeline: Any, items: list[Any], policies: dict[str, Any], scorer: Any,
              rows: Path, cache_path: Path, echo: bool = False) -> dict[str, Any]:
    """`evaluate` under a progress bar with an ETA over (questions × policies); rows already
    finished count as done from the start, so the ETA measures only the work left. With
    `echo`, each finished row is also printed (policy, question, wall seconds), so a run cut
    short still tells what it measured."""
    from agentkd.memory.evaluate import evaluate, load_rows, pending
    from agentkd.memory.rollouts import RolloutCache

    total = len(items) * len(policies)
    left = pending(load_rows(rows), items, policies)
    if left < total:
        console.print(f"resuming: {total - left} of {total} rows finished in {rows}")
    with RolloutCache(cache_path) as cache, _progress() as bar:
        pipeline.ctx.memo = cache
        task = bar.add_task("evaluating", total=total, completed=total - left, note="")

        def advance(note: str) -> None:
            bar.update(task, advance=1, note=note)
            if echo:
                bar.console.print(f"row done: {note}")

        return evaluate(pipeline, items, policies, scorer, rows, progress=advance)


@memory_app.command("eval")
def eval_cmd(
    routers: list[Path] = typer.Option([], "--router", help="Router file(s) (repeatable)."),
    data: str = typer.Option("locomo", help="locomo | longmemeval | hotpotqa."),
    data_path: Path = typer.Option(None, help="Dataset JSON (LoCoMo defaults to shared/data)."),
    per_sample: int = typer.Option(8, help="Test questions per conversation/sample, "
                                   "round-robin over categories (0 = all)."),
    questions: int = typer.Option(None, min=1, help="Test questions in all, spread evenly "
                                  "over the conversations/samples (overrides --per-sample; "
                                  "LoCoMo's test split holds 400)."),
    baselines: str = typer.Option(",".join(("all-low", "all-mid", "all-high", "random")),
                                  help="Comma-separated fixed-tier baselines ('' for none)."),
    cache_dir: Path = typer.Option(None, help="Rollout cache folder (default: the one beside "
                                   "the first router)."),
    plot: Path = typer.Option(None, help="Frontier PNG (default: <cache-dir>/frontier.png)."),
    config_file: Path = typer.Option(None, "--config", help="MemoryConfig as JSON (default: "
                                     "the config the router was trained with)."),
    strategy: str = typer.Option(None, help="implementation | capacity | reasoning (default: "
                                 "the routers' or the config's)."),
    high_model: str = typer.Option(None, help="LLM of the High tier (implementation)."),
    reasoning_model: str = typer.Option(None, help="LLM of every tier (reasoning)."),
    answer_model: str = typer.Option(None, help="LLM of the answer call."),
    judge_model: str = typer.Option(None, help="Score with an LLM judge instead of token F1."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    save: Path = typer.Option(None, help="Also write the JSON summary to this file."),
) -> None:
    """Evaluate routers and fixed-tier baselines on the test split; print and plot the frontier
    (F1 with its 95% bootstrap interval, cost, latency and wall time per query)."""
    from agentkd.memory.evaluate import frontier_plot
    from agentkd.memory.pipeline import Pipeline
    from agentkd.memory.router import Router

    try:
        loaded = [(p, Router.load(p)) for p in routers]
        trained_cfg = dict(loaded[0][1].meta.get("config") or {}) if loaded else {}
        cfg = _config(config_file, {"strategy": strategy, "high_model": high_model,
                                    "reasoning_model": reasoning_model,
                                    "answer_model": answer_model}, base=trained_cfg)
        folder = cache_dir or (routers[0].parent / "memory-cache" if routers
                               else Path("memory-cache"))
        pipeline = Pipeline(cfg, cache_dir=folder)
        _check_strategy(loaded, pipeline.config.strategy)
        ensure_models(pipeline.config.models() | ({judge_model} if judge_model else set()))
        policies = _baselines(baselines)
        lams: dict[str, float] = {}
        for path, router in loaded:
            # The file's digest is part of the name: eval rows are resumed by policy name, and
            # a retrained router at the same path must not inherit the old one's rows.
            name = f"router:{path.name}@{hashlib.sha256(path.read_bytes()).hexdigest()[:6]}"
            policies[name] = router
            lams[name] = float(router.meta.get("lambda", float("nan")))
        items, split = _items(data, data_path, per_sample, questions)
        scorer, scorer_name = _scorer(judge_model)
        # The rows file is per pipeline config and scorer, so rows of another config are never
        # mixed in; any question selection reads the same file (rows are keyed by question).
        cfg_hash = hashlib.sha256(pipeline.config.model_dump_json().encode()).hexdigest()[:8]
        rows = folder / f"eval-{data}-{split}-{scorer_name.replace('/', '_')}-{cfg_hash}.jsonl"
        summaries = _run_eval(pipeline, items, policies, scorer, rows,
                              folder / "rollouts.sqlite")
        for name, lam in lams.items():
            summaries[name].lam = lam
        strat = pipeline.config.strategy
        png = frontier_plot(list(summaries.values()), plot or folder / "frontier.png",
                            title=f"BudgetMem on {data}, {strat} tiers ({len(items)} questions)")
        report = {"data": data, "split": split, "strategy": strat, "questions": len(items),
                  "scorer": scorer_name, "config": pipeline.config.model_dump(),
                  "policies": {n: vars(s) for n, s in summaries.items()}}
        if save is not None:
            save.parent.mkdir(parents=True, exist_ok=True)
            save.write_text(json.dumps(report, indent=2))
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            _print_summaries(summaries, f"{data} {split}, {strat} tiers: {len(items)} questions,"
                                        f" score = {scorer_name}")
        console.print(f"frontier plot: {png}; per-query rows: {rows}")
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: rerun the same command to resume")
        raise typer.Exit(130) from None
    except AgentKDError as exc:
        _fail(str(exc))


def warm_up(pipeline: Any) -> None:
    """Load every LLM the pipeline calls (a one-token call each), so timings exclude loading."""
    for model in sorted(pipeline.config.models()):
        pipeline.ctx.chat(model, "Hi", 1)


@memory_app.command("time")
def time_cmd(
    data: str = typer.Option("locomo", help="locomo | longmemeval | hotpotqa."),
    data_path: Path = typer.Option(None, help="Dataset JSON (LoCoMo defaults to shared/data)."),
    questions: int = typer.Option(1, min=1, help="Questions to time (the first of the "
                                  "evaluation's round-robin selection)."),
    project: int = typer.Option(200, min=1, help="Questions of the evaluation to project."),
    n_routers: int = typer.Option(3, "--routers", min=0, help="Routers in that evaluation "
                                  "(each counted at the fixed tiers' mean)."),
    baselines: str = typer.Option(",".join(("all-low", "all-mid", "all-high", "random")),
                                  help="Comma-separated fixed-tier baselines to time."),
    config_file: Path = typer.Option(None, "--config", help="MemoryConfig as JSON."),
    strategy: str = typer.Option(None, help="implementation | capacity | reasoning."),
    high_model: str = typer.Option(None, help="LLM of the High tier (implementation)."),
    reasoning_model: str = typer.Option(None, help="LLM of every tier (reasoning)."),
    answer_model: str = typer.Option(None, help="LLM of the answer call."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Time the baselines on a few questions (fresh scratch cache, models loaded first) and
    project the wall time of an evaluation of --project questions."""
    import tempfile

    from agentkd.memory.evaluate import project_wall_s
    from agentkd.memory.pipeline import Pipeline

    try:
        cfg = _config(config_file, {"strategy": strategy, "high_model": high_model,
                                    "reasoning_model": reasoning_model,
                                    "answer_model": answer_model})
        policies = _baselines(baselines)
        items, _ = _items(data, data_path, 0, questions)
        scorer, _ = _scorer(None)
        with tempfile.TemporaryDirectory(prefix="agentkd-memory-time-") as tmp:
            pipeline = Pipeline(cfg, cache_dir=Path(tmp))
            ensure_models(pipeline.config.models())
            warm_up(pipeline)
            summaries = _run_eval(pipeline, items, policies, scorer, Path(tmp) / "rows.jsonl",
                                  Path(tmp) / "rollouts.sqlite", echo=True)
        seconds = {n: s.wall_s_per_query for n, s in summaries.items()}
        total_s = project_wall_s(seconds, project, n_routers)
        report = {"strategy": pipeline.config.strategy, "timed_questions": len(items),
                  "wall_s_per_question": seconds,
                  "latency_s_per_question": {n: s.latency_s_per_query
                                             for n, s in summaries.items()},
                  "project_questions": project, "routers": n_routers,
                  "projected_wall_s": total_s}
        if as_json:
            typer.echo(json.dumps(report, indent=2))
            return
        _print_summaries(summaries, f"{pipeline.config.strategy} tiers: {len(items)} timed "
                                    "question(s), scratch cache", tiers=False)
        console.print(f"projected wall time for {project} questions × ({len(policies)} "
                      f"baselines + {n_routers} routers): {total_s / 3600:.2f} h "
                      f"({total_s / 60:.0f} min)")
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]")
        raise typer.Exit(130) from None
    except AgentKDError as exc:
        _fail(str(exc))
