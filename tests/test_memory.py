"""BudgetMem: modules × tiers, pipeline, router, PPO on a known problem, cache, data, CLI, hook.

Fast by default: a hashing bag-of-words embedder stands in for MiniLM and the scripted litellm
provider (tests/conftest.py) for the LLMs. Real local models run only under `-m slow`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import importable, require
from typer.testing import CliRunner

from agentkd.errors import ConfigError, InputError
from agentkd.memory import MODULES, TIERS, FixedTiers, Pipeline, Router, RouterNet
from agentkd.memory.data import (
    DEFAULT_LOCOMO,
    QAItem,
    Sample,
    Turn,
    load_dataset,
    load_hotpotqa,
    load_locomo,
    load_longmemeval,
    select_questions,
)
from agentkd.memory.integration import MEMORY_HEADER, compress_history
from agentkd.memory.metrics import token_f1
from agentkd.memory.modules import MODULE_TYPES, ModuleContext
from agentkd.memory.ppo import PPOConfig, greedy_tiers, train_router
from agentkd.memory.rollouts import (
    QueryOutcomes,
    Reward,
    RolloutCache,
    build_table,
    pending_runs,
    variants,
)

DIM = 384
MEMORY = "\n".join([
    "[8 May 2023] Caroline: I went to a LGBTQ support group yesterday and it was so powerful.",
    "[8 May 2023] Melanie: Wow, that's cool, Caroline! I painted a sunrise last year.",
    "[27 June 2023] Melanie: We went camping in the mountains with the kids last week.",
    "[27 June 2023] Caroline: I am researching adoption agencies for my future family.",
    "[3 July 2023] Melanie: My daughter loves pottery, we made a bowl together.",
])


class HashEmbedder:
    """Deterministic bag-of-words vectors (hashed buckets), L2-normalised like MiniLM's."""

    dim = DIM

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for w in re.findall(r"[a-z0-9]+", text.lower()):
                out[i, int(hashlib.md5(w.encode()).hexdigest()[:6], 16) % DIM] += 1.0
            out[i] /= max(np.linalg.norm(out[i]), 1e-6)
        return out


def llm_script(messages: list[dict[str, Any]], n: int) -> list[str]:
    prompt = messages[-1]["content"]
    if "line numbers" in prompt:
        return ["4"] * n
    if "Answer:" in prompt:
        return ["adoption agencies"] * n
    if "Reflect" in prompt:
        return ["Result: reflected facts"] * n
    return ["Caroline - researches - adoption agencies"] * n


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def pipeline(scripted: Any, embedder: HashEmbedder, tmp_path: Path) -> Pipeline:
    scripted.scripts["scripted/student"] = llm_script
    scripted.scripts["scripted/teacher"] = llm_script
    return Pipeline({"high_model": "scripted/student", "answer_model": "scripted/student"},
                    embedder=embedder, cache_dir=tmp_path / "cache")


QUERY = "What is Caroline researching?"


# --- modules × tiers -------------------------------------------------------------------


@pytest.mark.parametrize("module", MODULES)
@pytest.mark.parametrize("tier", TIERS)
def test_every_tier_of_every_module(pipeline: Pipeline, module: str, tier: str) -> None:
    result = pipeline.modules[module].run(tier, QUERY, MEMORY, pipeline.ctx)
    assert (result.module, result.tier) == (module, tier)
    assert isinstance(result.text, str) and result.latency_ms >= 0
    if tier == "low":  # rules: free, no calls
        assert result.cost_usd == 0 and not result.calls
    if tier == "mid":  # embedding scoring: billed embedding tokens, no LLM call
        assert not result.calls
    if tier == "high":  # one LLM call, role memory, priced
        assert len(result.calls) == 1 and result.calls[0].role == "memory"
        assert result.cost_usd >= result.calls[0].cost_usd > 0
        assert result.completion_tokens > 0


def test_tiers_cost_more_as_they_go_up(pipeline: Pipeline) -> None:
    costs = [pipeline.modules["filter"].run(t, QUERY, MEMORY, pipeline.ctx).cost_usd
             for t in TIERS]
    assert costs[0] == 0 < costs[1] < costs[2]


def test_rule_and_embedding_tiers_do_what_they_say(pipeline: Pipeline) -> None:
    ctx = pipeline.ctx
    low = pipeline.modules["filter"].run("low", QUERY, MEMORY, ctx).text
    assert "adoption" in low and "pottery" not in low
    mid = pipeline.modules["filter"].run("mid", QUERY, MEMORY, ctx).text
    assert "adoption agencies" in mid
    high = pipeline.modules["filter"].run("high", QUERY, MEMORY, ctx).text
    assert high.splitlines()[0].endswith("adoption agencies for my future family.")  # LLM said 4
    temporal = pipeline.modules["temporal"].run(
        "mid", "When did Caroline go to the support group?", MEMORY, ctx).text
    assert "'yesterday' = 7 May 2023" in temporal
    entity = pipeline.modules["entity"].run("low", QUERY, MEMORY, ctx).text
    assert entity.startswith("Caroline — ") and "adoption" in entity
    summary = pipeline.modules["summary"].run("low", QUERY, MEMORY, ctx).text
    assert summary == MEMORY  # concatenation (under the word budget)


def test_capacity_strategy_picks_the_model_per_tier(scripted: Any, embedder: HashEmbedder) -> None:
    scripted.scripts["scripted/student"] = llm_script
    scripted.scripts["scripted/teacher"] = llm_script
    p = Pipeline({"strategy": "capacity", "capacity_models": {
        "low": "scripted/student", "mid": "scripted/student", "high": "scripted/teacher"}},
        embedder=embedder)
    for tier, model in (("low", "scripted/student"), ("high", "scripted/teacher")):
        result = p.modules["entity"].run(tier, QUERY, MEMORY, p.ctx)
        assert [c.model for c in result.calls] == [model]


def test_reasoning_strategy_prompts(scripted: Any, embedder: HashEmbedder) -> None:
    scripted.scripts["scripted/student"] = llm_script
    p = Pipeline({"strategy": "reasoning", "reasoning_model": "scripted/student"},
                 embedder=embedder)
    direct = p.modules["topic"].run("low", QUERY, MEMORY, p.ctx)
    cot = p.modules["topic"].run("mid", QUERY, MEMORY, p.ctx)
    par = p.modules["topic"].run("high", QUERY, MEMORY, p.ctx)
    prompts = [m[-1]["content"] for _, m, _ in scripted.received]
    assert len(direct.calls) == 1 and "step by step" not in prompts[0]
    assert len(cot.calls) == 1 and "step by step" in prompts[1]
    assert len(par.calls) == 2 and "Plan:" in prompts[2] and "Reflect" in prompts[3]
    assert par.text == "reflected facts"


def test_failed_llm_call_falls_back_and_is_reported(scripted: Any, pipeline: Pipeline) -> None:
    def boom(messages: list[dict[str, Any]], n: int) -> list[str]:
        raise RuntimeError("provider down")

    scripted.scripts["scripted/student"] = boom
    result = pipeline.modules["filter"].run("high", QUERY, MEMORY, pipeline.ctx)
    assert result.error and "provider down" in result.error
    assert "adoption" in result.text  # the Mid evidence is still handed on


# --- pipeline -------------------------------------------------------------------------


def test_pipeline_runs_modules_in_order_and_sums_cost(pipeline: Pipeline) -> None:
    turns = [Turn("Caroline", "I am researching adoption agencies.", 1, "8 May, 2023"),
             Turn("Melanie", "I love pottery.", 1, "8 May, 2023"),
             Turn("Melanie", "We went camping last week.", 2, "1 June, 2023")]
    result = pipeline.run(QUERY, turns, "high")
    assert [m.module for m in result.modules] == ["retrieval", *MODULES[:4], "summary", "answer"]
    assert result.tiers == dict.fromkeys(MODULES, "high")
    assert result.answer == "adoption agencies"
    assert result.cost_usd == pytest.approx(sum(m.cost_usd for m in result.modules))
    assert {c.role for c in result.calls} == {"memory"}
    low = pipeline.run(QUERY, turns, {m: "low" for m in MODULES})
    assert low.cost_usd < result.cost_usd


def test_chunking_respects_sessions(pipeline: Pipeline) -> None:
    from agentkd.memory.pipeline import chunk_turns

    turns = [Turn("A", f"t{i}", session=1 + i // 3, date="8 May, 2023") for i in range(7)]
    chunks = chunk_turns(turns, 2)
    assert [len(c.lines) for c in chunks] == [2, 1, 2, 1, 1]
    assert chunks[0].lines[0] == "[8 May 2023] A: t0"


def test_bad_inputs_give_clear_errors(pipeline: Pipeline) -> None:
    with pytest.raises(InputError, match="memory is empty"):
        pipeline.run(QUERY, [], "low")
    with pytest.raises(InputError, match="memory is empty"):
        pipeline.run(QUERY, "  \n ", "low")
    with pytest.raises(InputError, match="memory is empty"):
        pipeline.modules["filter"].run("low", QUERY, "", pipeline.ctx)
    with pytest.raises(InputError, match="query is empty"):
        pipeline.run("", MEMORY, "low")
    with pytest.raises(ConfigError, match="unknown tier 'ultra'"):
        pipeline.run(QUERY, MEMORY, "ultra")
    with pytest.raises(ConfigError, match="unknown tier"):
        pipeline.modules["summary"].run("ultra", QUERY, MEMORY, pipeline.ctx)
    with pytest.raises(ConfigError, match="unknown memory modules"):
        FixedTiers({"filtre": "low"})
    with pytest.raises(ConfigError, match="invalid memory config"):
        Pipeline({"strategy": "magic"})


# --- router ---------------------------------------------------------------------------


def test_router_forward_backward() -> None:
    net = RouterNet()
    q, m = torch.randn(7, DIM), torch.randn(7, DIM)
    logits, value = net(q, m, torch.arange(7) % len(MODULES))
    assert logits.shape == (7, 3) and value.shape == (7,)
    (logits.logsumexp(-1).sum() + value.pow(2).sum()).backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert net.proj.weight.grad is not None and net.proj.weight.grad.abs().sum() > 0


def test_saved_router_reloads_and_routes_identically(tmp_path: Path) -> None:
    torch.manual_seed(3)
    router = Router(RouterNet(), meta={"lambda": 0.5})
    with torch.no_grad():  # make the choices non-trivial
        router.net.policy_head.weight.normal_(std=1.0)
    path = router.save(tmp_path / "router.pt")
    again = Router.load(path)
    rng = np.random.default_rng(0)
    for _ in range(20):
        q, m = rng.normal(size=DIM), rng.normal(size=DIM)
        for module in MODULES:
            assert router.choose(module, q, m) == again.choose(module, q, m)
            np.testing.assert_array_equal(router.probs(module, q, m), again.probs(module, q, m))
    assert again.meta["lambda"] == 0.5


def test_router_load_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="router file not found"):
        Router.load(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_text("not a model")
    with pytest.raises(InputError, match="not a router file"):
        Router.load(bad)
    with pytest.raises(InputError, match="dimension"):
        Router().choose("filter", np.zeros(10), np.zeros(DIM))
    with pytest.raises(ConfigError, match="unknown memory module"):
        Router().choose("nope", np.zeros(DIM), np.zeros(DIM))


# --- reward and PPO -------------------------------------------------------------------


def synthetic_table(n: int = 40, seed: int = 0) -> list[QueryOutcomes]:
    """Two kinds of query. 'Hard' ones gain 0.6 F1 from a High Filter, 'easy' ones gain nothing
    from any upgrade; every tier above Low costs more. Optimum: High Filter on hard queries
    only, Low everywhere else."""
    rng = np.random.default_rng(seed)
    hard_dir, easy_dir = rng.normal(size=DIM), rng.normal(size=DIM)
    table = []
    for i in range(n):
        hard = i % 2 == 0
        qv = (hard_dir if hard else easy_dir) + 0.3 * rng.normal(size=DIM)
        qv = (qv / np.linalg.norm(qv)).astype(np.float32)
        mem = rng.normal(size=(4, DIM)).astype(np.float32)
        ref = 0.3
        score = np.full((len(MODULES), 3), ref)
        if hard:
            score[0] = [0.3, 0.3, 0.9]
        cost = np.tile(np.array([0.5, 1.0, 4.0]) , (len(MODULES), 1))
        ref_cost = 1.0 * len(MODULES)
        cost = ref_cost + (cost - 1.0)  # per-module deltas around the all-Mid reference
        table.append(QueryOutcomes(f"q{i}", qv, mem, ref, ref_cost, score, cost))
    return table


def test_reward_scale_alignment_and_efficiency() -> None:
    table = synthetic_table()
    reward = Reward(table, lam=1.0)
    eff = reward.efficiency(np.array([0.0, 3.0, 100.0]))
    assert eff[0] > eff[1] > eff[2] and eff.min() >= 0 and eff.max() <= 1
    assert reward.alpha > 0
    # Rescaled task term and cost term have the same spread over the population.
    combos = np.array([[t] * len(MODULES) for t in range(3)])
    s = table[0].combo_score(combos)
    assert s[2] == pytest.approx(0.9)
    with pytest.raises(InputError):
        Reward([], 1.0)


def test_ppo_learns_the_known_best_tiers() -> None:
    table = synthetic_table()
    reward = Reward(table, lam=1.0)
    router, history = train_router(table, reward, PPOConfig(iterations=60, batch_episodes=64,
                                                            seed=0))
    assert history.greedy_reward[-1] > history.greedy_reward[0] + 0.1
    assert np.mean(history.mean_reward[-10:]) > np.mean(history.mean_reward[:5])
    tiers = greedy_tiers(router, table)
    hard = tiers[0::2]
    easy = tiers[1::2]
    assert (hard[:, 0] == 2).mean() >= 0.9       # High Filter where it pays
    assert (easy[:, 0] == 0).mean() >= 0.9       # Low Filter where it does not
    assert (tiers[:, 1:] == 0).mean() >= 0.9     # Low elsewhere: upgrades only cost


def test_lambda_moves_the_router_along_the_frontier() -> None:
    table = synthetic_table()
    costs = []
    for lam in (0.05, 20.0):
        router, _ = train_router(table, Reward(table, lam), PPOConfig(iterations=40, seed=1))
        tiers = greedy_tiers(router, table)
        costs.append(np.mean([q.combo_cost(t) for q, t in zip(table, tiers, strict=True)]))
    assert costs[1] < costs[0]


# --- rollout cache --------------------------------------------------------------------


def tiny_samples() -> list[Sample]:
    turns = [Turn("Caroline", "I am researching adoption agencies.", 1, "8 May, 2023"),
             Turn("Melanie", "I painted a sunrise last year.", 1, "8 May, 2023"),
             Turn("Melanie", "We went camping last week.", 2, "1 June, 2023"),
             Turn("Caroline", "I went to a support group yesterday.", 2, "1 June, 2023")]
    return [Sample("s0", turns, [
        QAItem("s0-q0", QUERY, "adoption agencies", "4"),
        QAItem("s0-q1", "When did Melanie go camping?", "May 2023", "2")])]


def test_rollout_table_is_cached_and_resumable(pipeline: Pipeline, scripted: Any,
                                               tmp_path: Path) -> None:
    items = select_questions(tiny_samples(), None)
    scorer = lambda qa, answer: token_f1(answer, qa.answer)  # noqa: E731
    ran: list[str] = []
    with RolloutCache(tmp_path / "r.sqlite") as cache:
        assert pending_runs(pipeline, cache, items) == 22
        table = build_table(pipeline, cache, items, scorer, progress=ran.append)
        assert pending_runs(pipeline, cache, items) == 0
    assert len(table) == 2 and len(variants()) == 11 and len(ran) == 22
    q0 = table[0]
    assert q0.score.shape == (5, 3) and q0.memory_vecs.shape == (4, DIM)
    assert q0.ref_score == pytest.approx(1.0)  # scripted answer is exactly the gold
    assert q0.cost[0, 2] > q0.ref_cost  # High Filter adds an LLM call
    calls_before = len(scripted.received)
    fresh = Pipeline(pipeline.config, embedder=HashEmbedder())
    with RolloutCache(tmp_path / "r.sqlite") as cache:
        again = build_table(fresh, cache, items, scorer, progress=ran.append)
    assert len(scripted.received) == calls_before and len(ran) == 22  # nothing re-run
    np.testing.assert_allclose(again[0].score, q0.score)
    np.testing.assert_allclose(again[1].memory_vecs, table[1].memory_vecs)


# --- data -----------------------------------------------------------------------------


def test_locomo_loader_and_subset() -> None:
    require(DEFAULT_LOCOMO.is_file(), f"LoCoMo is not at {DEFAULT_LOCOMO} (the shared data "
                                      f"folder ../shared/data/locomo)")
    train = load_dataset("locomo", split="train")
    test = load_dataset("locomo", split="test")
    assert [s.sample_id for s in test] == ["locomo8", "locomo9"] and len(train) == 8
    assert all(q.category != "5" for s in train + test for q in s.questions)
    items = select_questions(test, 4)
    assert len(items) == 8
    assert [q.category for _, q in items[:4]] == ["1", "2", "3", "4"]
    assert items == select_questions(test, 4)  # fixed subset
    assert test[0].turns[0].date and test[0].turns[0].session == 1


def test_missing_and_malformed_data_files(tmp_path: Path) -> None:
    for loader in (load_locomo, load_longmemeval, load_hotpotqa):
        with pytest.raises(InputError, match="file not found"):
            loader(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_hotpotqa(bad)
    bad.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(InputError, match="malformed"):
        load_longmemeval(bad)
    with pytest.raises(InputError, match="malformed"):
        load_locomo(bad)
    with pytest.raises(InputError, match="unknown dataset"):
        load_dataset("squad", bad)
    with pytest.raises(InputError, match="needs --data-path"):
        load_dataset("hotpotqa")


def test_longmemeval_and_hotpotqa_published_formats(tmp_path: Path) -> None:
    lme = tmp_path / "longmemeval_s.json"
    lme.write_text(json.dumps([{
        "question_id": "e47becba", "question_type": "single-session-user",
        "question": "What degree did I graduate with?", "answer": "Business Administration",
        "question_date": "2023/05/30 (Tue) 23:40", "haystack_dates": ["2023/05/20 (Sat) 02:21"],
        "haystack_session_ids": ["s1"], "answer_session_ids": ["s1"],
        "haystack_sessions": [[{"role": "user", "content": "I graduated with a degree in "
                                "Business Administration.", "has_answer": True},
                               {"role": "assistant", "content": "Congratulations!"}]]}]))
    [sample] = load_longmemeval(lme)
    assert sample.questions[0].answer == "Business Administration" and len(sample.turns) == 2
    hp = tmp_path / "hotpot.json"
    hp.write_text(json.dumps([{
        "_id": "5a8b57f25542995d1e6f1371", "question": "Were Scott Derrickson and Ed Wood of "
        "the same nationality?", "answer": "yes", "type": "comparison", "level": "hard",
        "supporting_facts": [["Scott Derrickson", 0], ["Ed Wood", 0]],
        "context": [["Scott Derrickson", ["Scott Derrickson is an American director."]],
                    ["Ed Wood", ["Edward Wood Jr. was an American filmmaker.", " He acted."]]]}]))
    [sample] = load_hotpotqa(hp)
    assert [t.speaker for t in sample.turns] == ["Scott Derrickson", "Ed Wood", "Ed Wood"]
    assert sample.turns[2].text == "He acted."


def test_token_f1() -> None:
    assert token_f1("The adoption agencies!", "adoption agencies") == 1.0
    assert token_f1("7 May 2023", "7 May, 2023") == 1.0
    assert token_f1("nothing", "adoption agencies") == 0.0
    assert 0 < token_f1("adoption", "adoption agencies") < 1


# --- Distiller hook -------------------------------------------------------------------


def test_compress_history_contract(pipeline: Pipeline) -> None:
    messages = [{"role": "system", "content": "You are an agent."},
                {"role": "user", "content": "Goal: find the adoption agency notes."}]
    for i in range(6):
        messages.append({"role": "assistant", "content": f"action {i}: open drawer {i}"})
        messages.append({"role": "user", "content": f"You see adoption papers in drawer {i}."
                         if i == 3 else f"Drawer {i} is empty."})
    before = json.dumps(messages)
    new, calls = compress_history(messages, "Goal: adoption notes. Obs: drawer 5 is empty.",
                                  pipeline, "mid")
    assert json.dumps(messages) == before  # input untouched
    assert new[:2] == messages[:2] and new[-2:] == messages[-2:]
    assert len(new) == 5 and new[2]["role"] == "user"
    assert new[2]["content"].startswith(MEMORY_HEADER) and "drawer 3" in new[2]["content"]
    assert {c.role for c in calls} == {"memory"}
    assert {c.model for c in calls} == {f"memory/{m}@mid" for m in MODULES}
    routed, calls = compress_history(messages, "adoption papers", pipeline, "high")
    assert any(c.model == "scripted/student" for c in calls)  # the High tiers' LLM calls
    short, none = compress_history(messages[:4], "q", pipeline, "mid")
    assert short == messages[:4] and none == []
    with pytest.raises(InputError):
        compress_history(messages, "", pipeline, "mid")


# --- CLI ------------------------------------------------------------------------------


def test_cli_train_and_eval(tmp_path: Path, scripted: Any, monkeypatch: Any) -> None:
    from agentkd.cli import app
    from agentkd.retrieval import embedder as emb

    monkeypatch.setitem(emb._cache, "hash-embedder", HashEmbedder())  # type: ignore[arg-type]
    scripted.scripts["scripted/student"] = llm_script
    data = tmp_path / "hotpot.json"
    data.write_text(json.dumps([
        {"_id": f"h{i}", "question": QUERY, "answer": "adoption agencies", "type": "bridge",
         "context": [["Caroline", ["Caroline is researching adoption agencies."]],
                     ["Melanie", ["Melanie loves pottery and camping."]]]} for i in range(3)]))
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"high_model": "scripted/student", "answer_model": "scripted/student",
                               "embedding_model": "hash-embedder"}))
    runner = CliRunner()
    out = tmp_path / "r" / "router.pt"
    res = runner.invoke(app, ["memory", "train", "--data", "hotpotqa", "--data-path", str(data),
                              "--config", str(cfg), "--lambda", "0.5", "--lambda", "2",
                              "--iterations", "3", "--out", str(out)])
    assert res.exit_code == 0, res.output
    routers = [out.with_name("router-lambda0.5.pt"), out.with_name("router-lambda2.pt")]
    assert all(p.is_file() for p in routers)
    args = ["memory", "eval", "--data", "hotpotqa", "--data-path", str(data), "--json"]
    for p in routers:
        args += ["--router", str(p)]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "r" / "memory-cache" / "frontier.png").stat().st_size > 1000
    assert '"all-high"' in res.output and '"router:router-lambda2.pt@' in res.output
    res = runner.invoke(app, ["memory", "eval", "--router", str(tmp_path / "none.pt")])
    assert res.exit_code == 2 and "router file not found" in res.output
    res = runner.invoke(app, ["memory", "train", "--data", "hotpotqa", "--data-path",
                              str(tmp_path / "missing.json"), "--out", str(out)])
    assert res.exit_code == 2 and "file not found" in res.output


def test_context_exposes_embedding_price(pipeline: Pipeline) -> None:
    ctx: ModuleContext = pipeline.ctx
    assert ctx.embedding_cost(1_000_000) == pytest.approx(pipeline.config.embedding_usd_per_mtok)
    assert set(MODULE_TYPES) == set(MODULES)


# --- real local models (slow) ---------------------------------------------------------


@pytest.mark.slow
def test_real_local_models_answer_over_locomo(tmp_path: Path) -> None:
    require(importable("llama_cpp"), "needs llama-cpp-python: pip install 'agentkd[local]'")
    from agentkd import local_models

    local_models.register()
    [sample] = load_locomo(conversations=(0,))
    pipeline = Pipeline(cache_dir=tmp_path)
    qa = sample.questions[0]
    result = pipeline.run(qa.question, sample.turns, "high")
    assert result.answer and all(c.error is None for c in result.calls)
    assert result.cost_usd > 0
