"""Evaluation of tier policies on held-out queries, and the accuracy–cost frontier plot.

Every policy runs the real pipeline (never the factored training table). Per-query rows are
appended to a JSONL file, so an interrupted evaluation resumes where it stopped; module calls
are memoised in the rollout cache, so policies that agree on a module's input share its call.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agentkd.memory.config import MODULES
from agentkd.memory.data import QAItem, Sample
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
    tier_mix: dict[str, dict[str, int]] = field(default_factory=dict)
    lam: float | None = None


def baseline_policy(name: str, qid: str) -> TierPolicy:
    if name == "random":
        # Seeded by the query, so the random baseline is the same on every (resumed) run.
        return RandomTiers(int(hashlib.sha256(qid.encode()).hexdigest()[:8], 16))
    return FixedTiers(name.removeprefix("all-"))


def evaluate(pipeline: Pipeline, items: list[tuple[Sample, QAItem]],
             policies: Mapping[str, TierPolicy | Callable[[str], TierPolicy]],
             scorer: Callable[[QAItem, str], float], rows_path: Path,
             progress: Callable[[str], None] | None = None) -> dict[str, PolicySummary]:
    """Run each policy on each query (resuming from `rows_path`) and summarise."""
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    done: dict[tuple[str, str], dict[str, Any]] = {}
    if rows_path.is_file():
        for line in rows_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[(row["policy"], row["qid"])] = row
    indexes: dict[str, MemoryIndex] = {}
    with rows_path.open("a") as out:
        for sample, qa in items:
            for name, policy in policies.items():
                if (name, qa.qid) not in done:
                    if sample.sample_id not in indexes:
                        indexes[sample.sample_id] = pipeline.index(sample.turns)
                    pol = policy(qa.qid) if callable(policy) and not hasattr(policy, "choose") \
                        else policy
                    result = pipeline.run(qa.question, indexes[sample.sample_id],
                                          pol)
                    row = {"policy": name, "qid": qa.qid, "question": qa.question,
                           "gold": qa.answer, "answer": result.answer, "category": qa.category,
                           "score": scorer(qa, result.answer), "cost": result.cost_usd,
                           "tokens": result.prompt_tokens + result.completion_tokens,
                           "latency_ms": result.latency_ms, "tiers": result.tiers,
                           "errors": [m.error for m in result.modules if m.error]}
                    if not row["errors"]:  # failed runs are retried when the eval is resumed
                        out.write(json.dumps(row) + "\n")
                        out.flush()
                    done[(name, qa.qid)] = row
                if progress:
                    progress(f"{name} {qa.qid}")
    return summarise(done, policies, [qa.qid for _, qa in items])


def summarise(rows: Mapping[tuple[str, str], Mapping[str, Any]], policies: Mapping[str, object],
              qids: list[str]) -> dict[str, PolicySummary]:
    out = {}
    for name in policies:
        picked = [rows[(name, q)] for q in qids if (name, q) in rows]
        s = PolicySummary(name=name, n=len(picked))
        if picked:
            s.score = sum(float(r["score"]) for r in picked) / len(picked)
            s.cost_per_query = sum(float(r["cost"]) for r in picked) / len(picked)
            s.tokens_per_query = sum(float(r["tokens"]) for r in picked) / len(picked)
            s.latency_s_per_query = sum(float(r["latency_ms"]) for r in picked) / len(picked) / 1000
            mix: dict[str, Counter[str]] = {m: Counter() for m in MODULES}
            for r in picked:
                for m, t in dict(r["tiers"]).items():
                    mix[m][t] += 1
            s.tier_mix = {m: dict(c) for m, c in mix.items()}
        out[name] = s
    return out


def frontier_plot(summaries: list[PolicySummary], path: Path, title: str = "BudgetMem") -> Path:
    """Score vs cost per query: fixed tiers joined by a line, routers labelled by λ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    fixed = sorted((s for s in summaries if s.name in ("all-low", "all-mid", "all-high")),
                   key=lambda s: s.cost_per_query)
    if fixed:
        ax.plot([s.cost_per_query for s in fixed], [s.score for s in fixed], "o--",
                color="grey", label="fixed tiers")
        for s in fixed:
            ax.annotate(s.name, (s.cost_per_query, s.score), textcoords="offset points",
                        xytext=(4, -10), fontsize=8)
    for s in summaries:
        if s.name == "random":
            ax.plot(s.cost_per_query, s.score, "x", color="black", label="random")
    routers = sorted((s for s in summaries if s.lam is not None), key=lambda s: s.cost_per_query)
    if routers:
        ax.plot([s.cost_per_query for s in routers], [s.score for s in routers], "s-",
                color="tab:blue", label="router")
        for s in routers:
            ax.annotate(f"λ={s.lam:g}", (s.cost_per_query, s.score), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, color="tab:blue")
    ax.set_xlabel("cost per query (USD)")
    ax.set_ylabel("task score (token F1)")
    ax.set_title(title)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    ax.margins(x=0.12, y=0.1)  # room for the point labels
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def summary_dict(s: PolicySummary) -> dict[str, object]:
    return asdict(s)
