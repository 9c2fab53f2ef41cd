"""BudgetMem memory modules (Filter, Entity, Temporal, Topic, Summary) and the answer call.

Each module offers three tiers behind one interface, ``module.run(tier, query, memory, ctx)``,
and returns a `ModuleResult` carrying its own text, cost, tokens, latency and tier.

Memory is plain text, one memory line per line ("[8 May 2023] Caroline: ..."), so results are
content-addressable (see `ModuleContext.memo`) and any tier's output can feed any next module.

Strategies (``MemoryConfig.strategy``):

- implementation: Low = rules (keyword overlap, regex/date patterns, concatenation); Mid =
  MiniLM embedding scoring; High = an LLM call layered on the Mid evidence. High keeps the Mid
  evidence because a small local model's extraction alone loses facts the answer needs; the
  LLM adds relations/resolution the embedding cannot.
- capacity: every tier is the same LLM prompt, Low/Mid/High run small/medium/large models
  (by default SmolLM2-135M / Qwen2.5-Coder-0.5B / Qwen2.5-Coder-1.5B, see `MemoryConfig`).
- reasoning: every tier runs one model; Low = direct prompt, Mid = chain-of-thought, High =
  plan-act-reflect (a draft call, then a reflect call that revises it).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np

from agentkd import llm
from agentkd.costs import price_per_token, register_price
from agentkd.errors import InputError
from agentkd.log import CallRecord
from agentkd.memory import text as T
from agentkd.memory.config import MemoryConfig, check_tier

# Part of every memo key: bump it when a prompt or a rule changes, so cached results of the
# old behaviour are not reused.
PROMPT_VERSION = 1
ANSWER_SYSTEM = ("You answer questions about a conversation with a short phrase, never a full "
                 "sentence.")


@dataclass
class ModuleResult:
    """What one module produced at one tier, and what that cost."""

    module: str
    tier: str
    text: str
    cost_usd: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    calls: list[CallRecord] = field(default_factory=list)
    error: str | None = None
    cached: bool = False

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("cached")
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: str) -> ModuleResult:
        data = json.loads(raw)
        data["calls"] = [CallRecord(**c) for c in data.get("calls", [])]
        return cls(**data, cached=True)


class Memo(Protocol):
    """Content-addressed store of module results (e.g. `RolloutCache`)."""

    def get(self, key: str) -> ModuleResult | None: ...

    def put(self, key: str, result: ModuleResult) -> None: ...


class Encoder(Protocol):
    def encode(self, texts: list[str]) -> np.ndarray: ...


class ModuleContext:
    """What modules share: config, the embedder (with an in-process vector cache) and a memo."""

    def __init__(self, config: MemoryConfig, embedder: Encoder | None = None,
                 memo: Memo | None = None) -> None:
        self.config = config
        self._embedder = embedder
        self.memo = memo
        self._vectors: dict[str, np.ndarray] = {}
        for model, (inp, out) in config.fallback_prices.items():
            if price_per_token(model) is None:
                register_price(model, inp, out)

    @property
    def embedder(self) -> Encoder:
        if self._embedder is None:
            from agentkd.retrieval.embedder import get_embedder

            self._embedder = get_embedder(self.config.embedding_model)
        return self._embedder

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        """Vectors for `texts` and the tokens billed (only texts not embedded before are billed,
        as a real deployment would cache them too)."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._vectors]
        if missing:
            for t, v in zip(missing, self.embedder.encode(missing), strict=True):
                self._vectors[t] = v
            if len(self._vectors) > 50_000:  # bound memory in long runs
                self._vectors = dict(list(self._vectors.items())[-25_000:])
        tokens = sum(math.ceil(1.3 * T.word_count(t)) for t in missing)
        vecs = [self._vectors[t] for t in texts]
        if not vecs:
            return np.zeros((0, 1), dtype=np.float32), 0
        return np.stack(vecs), tokens

    def embedding_cost(self, tokens: int) -> float:
        return tokens * self.config.embedding_usd_per_mtok / 1e6

    def chat(self, model: str, prompt: str, max_tokens: int,
             system: str | None = None) -> tuple[str, CallRecord]:
        kwargs: dict[str, Any] = dict(self.config.llm_kwargs)
        kwargs.setdefault("temperature", self.config.temperature)
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": prompt})
        result = llm.complete(model, messages, role="memory", max_tokens=max_tokens, **kwargs)
        text = str(result.messages()[0].get("content") or "") if result.ok else ""
        return text.strip(), result.record


def _rank(ctx: ModuleContext, query: str, lines: list[str]) -> tuple[np.ndarray, int]:
    """Cosine similarity of each line to the query, and embedding tokens billed."""
    if not lines:
        return np.zeros(0, dtype=np.float32), 0
    vecs, tokens = ctx.embed([query, *lines])
    return vecs[1:] @ vecs[0], tokens


def _top_lines(lines: list[str], scores: np.ndarray, k: int,
               margin: float | None = None) -> list[str]:
    """Top-k lines by score (optionally only within `margin` of the best), in memory order."""
    if not lines:
        return []
    order = np.argsort(-scores)[:k]
    if margin is not None:
        best = float(scores[order[0]])
        order = np.array([i for i in order if float(scores[i]) >= best - margin] or [order[0]])
    keep = sorted(int(i) for i in order)
    return [lines[i] for i in keep]


def _numbered(lines: list[str], words: int) -> str:
    return T.truncate_words("\n".join(f"{i + 1}. {line}" for i, line in enumerate(lines)), words)


class MemoryModule:
    """One pipeline stage; subclasses implement `low`, `mid` and `instruction`."""

    name = ""
    k = 6

    def run(self, tier: str, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        check_tier(tier)
        if not isinstance(memory, str) or not memory.strip():
            raise InputError(f"{self.name}: memory is empty; pass at least one memory line")
        if not isinstance(query, str) or not query.strip():
            raise InputError(f"{self.name}: query is empty")
        key = self.memo_key(tier, query, memory, ctx.config)
        if ctx.memo is not None:
            hit = ctx.memo.get(key)
            if hit is not None:
                return hit
        start = time.perf_counter()
        if ctx.config.strategy == "implementation":
            result = {"low": self.low, "mid": self.mid, "high": self.high}[tier](query, memory, ctx)
        else:
            result = self.llm_tier(tier, query, memory, ctx)
        result.latency_ms = (time.perf_counter() - start) * 1000
        result.cost_usd += sum(c.cost_usd for c in result.calls)
        result.prompt_tokens += sum(c.prompt_tokens for c in result.calls)
        result.completion_tokens += sum(c.completion_tokens for c in result.calls)
        errors = [c.error for c in result.calls if c.error]
        if errors and result.error is None:
            result.error = errors[0]
        # Failed LLM calls are not memoised, so a resumed run retries them.
        if ctx.memo is not None and result.error is None:
            ctx.memo.put(key, result)
        return result

    def memo_key(self, tier: str, query: str, memory: str, config: MemoryConfig) -> str:
        llm_used = config.strategy != "implementation" or tier == "high"
        parts = [PROMPT_VERSION, self.name, tier, config.strategy,
                 config.model_for(tier) if llm_used else "",
                 config.module_max_tokens if llm_used else 0, config.context_words,
                 config.temperature if llm_used else 0, query, memory]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def result(self, tier: str, text: str, **kw: Any) -> ModuleResult:
        return ModuleResult(module=self.name, tier=tier, text=text, **kw)

    def embedded(self, tier: str, text: str, tokens: int, ctx: ModuleContext,
                 calls: list[CallRecord] | None = None) -> ModuleResult:
        # Embedding tokens count as prompt tokens of the module, priced at the embedder's rate.
        return self.result(tier, text, cost_usd=ctx.embedding_cost(tokens), prompt_tokens=tokens,
                           calls=calls or [])

    # --- tiers -------------------------------------------------------------------------
    def low(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        raise NotImplementedError

    def mid(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        raise NotImplementedError

    def instruction(self, query: str) -> str:
        raise NotImplementedError

    def parse_llm(self, output: str, memory: str) -> str:
        return output.strip()

    def prompt(self, query: str, memory: str, ctx: ModuleContext) -> str:
        body = _numbered(T.split_lines(memory), ctx.config.context_words)
        return f"Memory:\n{body}\n\nQuestion: {query}\n{self.instruction(query)}"

    def high(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        """Mid evidence plus the LLM's extraction (see the module docstring for why)."""
        base = self.mid(query, memory, ctx)
        output, record = ctx.chat(ctx.config.high_model, self.prompt(query, memory, ctx),
                                  ctx.config.module_max_tokens)
        extra = self.parse_llm(output, memory) if output else ""
        text = self.combine(extra, base.text)
        return self.result("high", text, cost_usd=base.cost_usd, prompt_tokens=base.prompt_tokens,
                           calls=[record])

    def combine(self, llm_text: str, mid_text: str) -> str:
        if not llm_text:
            return mid_text
        return f"{llm_text}\n{mid_text}".strip()

    def llm_tier(self, tier: str, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        """Capacity and reasoning strategies: the tier picks the model or the prompt style."""
        model = ctx.config.model_for(tier)
        max_tokens = ctx.config.module_max_tokens
        prompt = self.prompt(query, memory, ctx)
        calls: list[CallRecord] = []
        if ctx.config.strategy == "reasoning" and tier == "mid":
            prompt += ("\nThink step by step in at most three short sentences, then write "
                       "'Result:' followed by your result.")
            max_tokens *= 2
        elif ctx.config.strategy == "reasoning" and tier == "high":
            plan = prompt + ("\nFirst write 'Plan:' with the steps you will take, then 'Result:' "
                             "with your result.")
            draft, record = ctx.chat(model, plan, max_tokens * 2)
            calls.append(record)
            prompt += (f"\nA draft answer was:\n{_after_result(draft)}\nReflect: check the draft "
                       "against the memory, fix anything wrong or missing, and write 'Result:' "
                       "followed by the corrected result.")
        output, record = ctx.chat(model, prompt, max_tokens)
        calls.append(record)
        text = self.parse_llm(_after_result(output), memory) if output else ""
        if not text:
            # An empty or failed call still hands something on: the module's rules output.
            text = self.low(query, memory, ctx).text
        return self.result(tier, text, calls=calls)


def _after_result(output: str) -> str:
    idx = output.rfind("Result:")
    return output[idx + len("Result:"):].strip() if idx >= 0 else output.strip()


class Filter(MemoryModule):
    """M1: keep the memory lines that bear on the query."""

    name = "filter"
    k = 6

    def low(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        lines = T.split_lines(memory)
        q = T.content_words(query) | {e.lower() for e in T.entities(query)}
        scores = np.array([len(q & T.content_words(line)) for line in lines], dtype=np.float32)
        if scores.max(initial=0) == 0:
            return self.result("low", "\n".join(lines))  # no overlap: nothing to judge by
        keep = [line for line, s in zip(lines, scores, strict=True) if s > 0]
        if len(keep) > self.k:
            keep = _top_lines(lines, scores, self.k)
        return self.result("low", "\n".join(keep))

    def mid(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        lines = T.split_lines(memory)
        scores, tokens = _rank(ctx, query, lines)
        keep = _top_lines(lines, scores, self.k, margin=0.25)
        return self.embedded("mid", "\n".join(keep), tokens, ctx)

    def instruction(self, query: str) -> str:
        return "Which numbered lines help answer the question? Reply with line numbers only."

    def parse_llm(self, output: str, memory: str) -> str:
        lines = T.split_lines(memory)
        picked = [int(n) - 1 for n in re.findall(r"\d+", output)]
        chosen = [lines[i] for i in dict.fromkeys(picked) if 0 <= i < len(lines)]
        return "\n".join(chosen)

    def combine(self, llm_text: str, mid_text: str) -> str:
        # The LLM's picks first, then the embedding's, without duplicates.
        merged = list(dict.fromkeys(T.split_lines(llm_text) + T.split_lines(mid_text)))
        return "\n".join(merged[: self.k + 2])


class EntityRelations(MemoryModule):
    """M2: what the memory says about the people and things the query names."""

    name = "entity"

    def _entity_lines(self, query: str, memory: str) -> tuple[list[str], list[tuple[str, str]]]:
        names = T.entities(query)
        lines = T.split_lines(memory)
        pairs = [(n, line) for n in names for line in lines if n.lower() in line.lower()]
        return names, pairs

    def low(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        names, pairs = self._entity_lines(query, memory)
        # Overlap on the non-name words: every line naming the entity would match otherwise.
        q = T.content_words(query) - {T.stem(w) for n in names for w in T.words(n)}
        hits = [f"{n} — {line}" for n, line in pairs if not q or q & T.content_words(line)]
        return self.result("low", "\n".join(hits[:4]))

    def mid(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        names, pairs = self._entity_lines(query, memory)
        if not pairs:
            return self.result("mid", "")
        scores, tokens = _rank(ctx, query, [line for _, line in pairs])
        best: list[str] = []
        for name in names:
            idx = [i for i, (n, _) in enumerate(pairs) if n == name]
            idx.sort(key=lambda i: -float(scores[i]))
            best.extend(f"{name} — {pairs[i][1]}" for i in idx[:2])
        return self.embedded("mid", "\n".join(best), tokens, ctx)

    def instruction(self, query: str) -> str:
        return ("List the facts the memory gives about the people or things in the question, "
                "one per line as 'entity - relation - value'.")


class TemporalRelations(MemoryModule):
    """M3: when things happened; dates resolved against each line's session date."""

    name = "temporal"

    @staticmethod
    def _annotate(line: str) -> str:
        anchor = T.parse_date(line[: line.find("]") + 1]) if line.startswith("[") else None
        notes = []
        if anchor is not None:
            for expr in T.RELATIVE_RE.findall(line):
                resolved = T.resolve_relative(expr, anchor)
                if resolved:
                    notes.append(f"'{expr}' = {resolved}")
        return f"{line} ({'; '.join(notes)})" if notes else line

    def _temporal_lines(self, memory: str) -> list[str]:
        return [line for line in T.split_lines(memory)
                if T.DATE_RE.search(line.split("]", 1)[-1]) or T.RELATIVE_RE.search(line)]

    def low(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        q = T.content_words(query)
        lines = [line for line in self._temporal_lines(memory) if q & T.content_words(line)]
        return self.result("low", "\n".join(lines[:4]))

    def mid(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        lines = self._temporal_lines(memory)
        if not lines:
            return self.result("mid", "")
        scores, tokens = _rank(ctx, query, lines)
        keep = _top_lines(lines, scores, 3)
        return self.embedded("mid", "\n".join(self._annotate(line) for line in keep), tokens, ctx)

    def instruction(self, query: str) -> str:
        return ("For the events in the question, give the date each happened as 'event: date'. "
                "Dates in brackets are when each line was said; resolve words like 'yesterday' "
                "or 'last week' against them.")


class TopicRelations(MemoryModule):
    """M5: the topics of the memory that the query is about, with their lines."""

    name = "topic"

    def low(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        q = T.content_words(query)
        counts: dict[str, int] = {}
        for line in T.split_lines(memory):
            for w in T.content_words(line.split(":", 1)[-1]):
                counts[w] = counts.get(w, 0) + 1
        shared = sorted((w for w in counts if w in q), key=lambda w: -counts[w])
        common = sorted(counts, key=lambda w: -counts[w])
        topics = list(dict.fromkeys(shared + common))[:5]
        return self.result("low", f"Topics: {', '.join(topics)}" if topics else "")

    def mid(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        lines = T.split_lines(memory)
        vecs, tokens = ctx.embed([query, *lines])
        qv, lv = vecs[0], vecs[1:]
        # Greedy clustering: a line joins the first cluster whose seed it resembles.
        clusters: list[list[int]] = []
        for i in range(len(lines)):
            for c in clusters:
                if float(lv[c[0]] @ lv[i]) >= 0.45:
                    c.append(i)
                    break
            else:
                clusters.append([i])
        scored = sorted(clusters, key=lambda c: -float(np.mean(lv[c], axis=0) @ qv))[:2]
        out = []
        for c in scored:
            counts: dict[str, int] = {}
            for i in c:
                for w in T.content_words(lines[i].split(":", 1)[-1]):
                    counts[w] = counts.get(w, 0) + 1
            label = max(counts, key=lambda w: counts[w]) if counts else "misc"
            out.append(f"Topic {label}: " + " | ".join(lines[i] for i in c[:2]))
        return self.embedded("mid", "\n".join(out), tokens, ctx)

    def instruction(self, query: str) -> str:
        return ("Name the topic the question is about and say in one or two lines what the "
                "memory says about that topic.")


class Summary(MemoryModule):
    """M4: compress the filtered memory and the relation notes into the answer's context."""

    name = "summary"

    def low(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        lines = list(dict.fromkeys(T.split_lines(memory)))
        return self.result("low", T.truncate_words("\n".join(lines), ctx.config.context_words))

    def mid(self, query: str, memory: str, ctx: ModuleContext) -> ModuleResult:
        lines = list(dict.fromkeys(T.split_lines(memory)))
        scores, tokens = _rank(ctx, query, lines)
        budget = ctx.config.context_words // 2
        keep: list[int] = []
        used = 0
        for i in np.argsort(-scores):
            n = T.word_count(lines[int(i)])
            if used + n > budget and keep:
                break
            keep.append(int(i))
            used += n
        text = "\n".join(lines[i] for i in sorted(keep))
        return self.embedded("mid", T.truncate_words(text, budget), tokens, ctx)

    def instruction(self, query: str) -> str:
        return "In two or three sentences, write the facts from the memory needed to answer."


class Answer:
    """The final answer call over the pipeline's context (not tiered; its model is configured)."""

    name = "answer"

    def memo_key(self, query: str, context: str, config: MemoryConfig) -> str:
        parts = [PROMPT_VERSION, "answer", config.answer_model, config.answer_max_tokens,
                 config.temperature, config.context_words, query, context]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def prompt(self, query: str, context: str, config: MemoryConfig) -> str:
        body = T.truncate_words(context, config.context_words)
        return (f"Memory:\n{body}\n\nUsing the memory, answer the question with a short phrase "
                f"(a name, a date or a few words).\nQuestion: {query}\nAnswer:")

    def run(self, query: str, context: str, ctx: ModuleContext) -> ModuleResult:
        key = self.memo_key(query, context, ctx.config)
        if ctx.memo is not None:
            hit = ctx.memo.get(key)
            if hit is not None:
                return hit
        start = time.perf_counter()
        text, record = ctx.chat(ctx.config.answer_model, self.prompt(query, context, ctx.config),
                                ctx.config.answer_max_tokens, system=ANSWER_SYSTEM)
        result = ModuleResult(module="answer", tier="fixed", text=text.split("\n")[0].strip(),
                              cost_usd=record.cost_usd, prompt_tokens=record.prompt_tokens,
                              completion_tokens=record.completion_tokens, calls=[record],
                              error=record.error,
                              latency_ms=(time.perf_counter() - start) * 1000)
        if ctx.memo is not None and result.error is None:
            ctx.memo.put(key, result)
        return result


MODULE_TYPES: dict[str, type[MemoryModule]] = {
    "filter": Filter, "entity": EntityRelations, "temporal": TemporalRelations,
    "topic": TopicRelations, "summary": Summary,
}
