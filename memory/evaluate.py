"""Evaluation of tier policies on held-out queries, the accuracy–cost frontier plot, and the
wall-time projection that sizes a run.

Every policy runs the real pipeline (never the factored training table). Per-query rows are
appended to a JSONL file, so an interrupted evaluation resumes where it stopped; module calls
are memoised in the rollout cache, so policies that agree on a module's input share its call.
A row records the pipeline's latency (the modules' own compute, kept when a module result is
read back from the memo) and `wall_s`, the seconds this evaluation actually spent on it (small
when the memo already held its module calls): the first is the policy's latency per query,
the second what the run costs in time.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentkd.memory.config import MODULES
from agentkd.memory.data import QAItem, Sample
from agentkd.memory.metrics import bootstrap_ci
from agentkd.memory.pipeline import FixedTiers, MemoryIndex, Pipeline, RandomTiers, TierPolicy

BASELINES = ("all-low", "all-mid", "all-high", "random")


@dataclass
class PolicySummary:
    name: str
    n: int = 0
    score: float = 0.0
    cost_per_query: float = 0.0
    tokens_per_query: float = 0.0
    latency_s_per_query: float = 0.0
    wall_s_per_query: float = 0.0
    score_ci: tuple[float, float] = (0.0, 0.0)
    tier_mix: dict[str, dict[str, int]] = field(default_factory=dict)
    lam: float | None = None


def baseline_policy(name: str, qid: str) -> TierPolicy:
    if name == "random":
        # Seeded by the query, so the random baseline is the same on every (resumed) run.
        return RandomTiers(int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16))
    return FixedTiers(name.removeprefix("all-"))


Rows = dict[tuple[str, str], dict[str, Any]]


def load_rows(rows_path: Path) -> Rows:
    """Finished eval rows by (policy, qid); a missing file is an empty run."""
    done: Rows = {}
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[(row["policy"], row["qid"])] = row
    return done


def pending(done: Rows, items: list[tuple[Sample, QAItem]], policies: Mapping[str, object]) -> int:
    """How many (question, policy) pairs of this evaluation have no finished row yet."""
    return sum((name, qa.qid) not in done for _, qa in items for name in policies)


def evaluate(pipeline: Pipeline, items: list[tuple[Sample, QAItem]],
             policies: Mapping[str, TierPolicy | Callable[[str], TierPolicy]],
             scorer: Callable[[QAItem, str], float], rows_path: Path,
             progress: Callable[[str], None] | None = None) -> dict[str, PolicySummary]:
    """Run each policy on each query (resuming from `rows_path`) and summarise.

    `progress` is called once per row this call computes (finished rows are skipped silently,
    so a progress bar started at `pending`'s complement measures only real work).
    """
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    done = load_rows(rows_path)
    indexes: dict[str, MemoryIndex] = {}
    with rows_path.open("a") as out:
        for sample, qa in items:
            for name, policy in policies.items():
                if (name, qa.qid) in done:
                    continue
                if sample.sample_id not in indexes:  # once per memory, outside the row's time
                    indexes[sample.sample_id] = pipeline.index(sample.turns)
                start = time.perf_counter()
                pol = policy(qa.qid) if callable(policy) and not hasattr(policy, "choose") \
                    else policy
                result = pipeline.run(qa.question, indexes[sample.sample_id], pol)
                row = {"policy": name, "qid": qa.qid, "question": qa.question,
                       "gold": qa.answer, "answer": result.answer, "category": qa.category,
                       "score": scorer(qa, result.answer), "cost": result.cost_usd,
                       "tokens": result.prompt_tokens + result.completion_tokens,
                       "latency_ms": result.latency_ms, "tiers": result.tiers,
                       "wall_s": time.perf_counter() - start,
                       "errors": [m.error for m in result.modules if m.error]}
                if not row["errors"]:  # failed runs are retried when the eval is resumed
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                done[(name, qa.qid)] = row
                if progress:
                    progress(f"{name} {qa.qid} {row['wall_s']:.1f}s")
    return summarise(done, policies, [qa.qid for _, qa in items])


def summarise(rows: Mapping[tuple[str, str], Mapping[str, Any]], policies: Mapping[str, object],
              qids: list[str]) -> dict[str, PolicySummary]:
    """Per policy over `qids`: mean score with its 95% bootstrap interval, cost, tokens,
    latency and wall time per query, and how often each module ran at each tier."""
    out = {}
    for name in policies:
        picked = [rows[(name, q)] for q in qids if (name, q) in rows]
        s = PolicySummary(name=name, n=len(picked))
        if picked:
            scores = [float(r["score"]) for r in picked]
            s.score = sum(scores) / len(scores)
            s.score_ci = bootstrap_ci(scores)
            s.cost_per_query = sum(float(r["cost"]) for r in picked) / len(picked)
            s.tokens_per_query = sum(float(r["tokens"]) for r in picked) / len(picked)
            s.latency_s_per_query = sum(float(r["latency_ms"]) for r in picked) / len(picked) / 1000
            # Rows written before wall_s was recorded count their latency instead.
            s.wall_s_per_query = sum(float(r.get("wall_s", float(r["latency_ms"]) / 1000))
                                     for r in picked) / len(picked)
            mix: dict[str, Counter[str]] = {m: Counter() for m in MODULES}
            for r in picked:
                for m, t in dict(r["tiers"]).items():
                    mix[m][t] += 1
            s.tier_mix = {m: dict(c) for m, c in mix.items()}
        out[name] = s
    return out


def _yerr(points: list[PolicySummary]) -> list[list[float]]:
    """Matplotlib's asymmetric error bars (below, above) from each score's interval."""
    return [[max(0.0, s.score - s.score_ci[0]) for s in points],
            [max(0.0, s.score_ci[1] - s.score) for s in points]]


def draw_frontier(ax: Any, summaries: list[PolicySummary], title: str) -> None:
    """One frontier panel: fixed tiers joined by a dashed line, random, routers labelled by λ;
    every point carries its score's 95% bootstrap interval as a vertical error bar."""
    fixed = sorted((s for s in summaries if s.name in ("all-low", "all-mid", "all-high")),
                   key=lambda s: s.cost_per_query)
    if fixed:
        ax.errorbar([s.cost_per_query for s in fixed], [s.score for s in fixed],
                    yerr=_yerr(fixed), fmt="o--", color="grey", capsize=3, label="fixed tiers")
        for s in fixed:
            ax.annotate(s.name, (s.cost_per_query, s.score), textcoords="offset points",
                        xytext=(4, -10), fontsize=8)
    randoms = [s for s in summaries if s.name == "random"]
    if randoms:
        ax.errorbar([s.cost_per_query for s in randoms], [s.score for s in randoms],
                    yerr=_yerr(randoms), fmt="x", color="black", capsize=3, label="random")
    routers = sorted((s for s in summaries if s.lam is not None), key=lambda s: s.cost_per_query)
    if routers:
        ax.errorbar([s.cost_per_query for s in routers], [s.score for s in routers],
                    yerr=_yerr(routers), fmt="s-", color="tab:blue", capsize=3, label="router")
        for s in routers:
            ax.annotate(f"λ={s.lam:g}", (s.cost_per_query, s.score), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, color="tab:blue")
    ax.set_xlabel("cost per query (USD)")
    ax.set_ylabel("task score (token F1, 95% CI)")
    ax.set_title(title)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.margins(x=0.12, y=0.1)  # room for the point labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def frontier_plot(summaries: list[PolicySummary] | Mapping[str, list[PolicySummary]],
                  path: Path, title: str = "BudgetMem") -> Path:
    """Score vs cost per query as a PNG: one panel, or one panel per key of a mapping (say,
    per tiering strategy), side by side under a common title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = dict(summaries) if isinstance(summaries, Mapping) else {title: summaries}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (name, points) in zip(axes[0], panels.items(), strict=True):
        draw_frontier(ax, points, name)
    if isinstance(summaries, Mapping):
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def project_wall_s(seconds: Mapping[str, float], questions: int, routers: int = 0) -> float:
    """Projected wall seconds of an evaluation of `questions` questions: every policy in
    `seconds` (measured wall seconds per question) plus `routers` routers, each counted at the
    mean of the measured fixed-tier policies (a router mixes their tiers)."""
    if questions < 0 or routers < 0:
        raise ValueError("questions and routers must be >= 0")
    fixed = [v for k, v in seconds.items() if k in ("all-low", "all-mid", "all-high")]
    router_s = sum(fixed) / len(fixed) if fixed else 0.0
    return questions * (sum(seconds.values()) + routers * router_s)


def summary_dict(s: PolicySummary) -> dict[str, object]:
    return asdict(s)
