"""The BudgetMem pipeline: chunk → retrieve top-k → Filter → Entity / Temporal / Topic →
Summary → answer, with a tier per module chosen by a policy (fixed tiers or the router).

`MemoryIndex` owns chunking and first-stage retrieval; `Pipeline.run` owns the module order,
the router's state per module and the per-query cost totals.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from agentkd.errors import ConfigError, InputError
from agentkd.log import CallRecord
from agentkd.memory import text as T
from agentkd.memory.config import MODULES, MemoryConfig, check_tier, memory_config
from agentkd.memory.data import Turn
from agentkd.memory.modules import MODULE_TYPES, Answer, Memo, ModuleContext, ModuleResult

RELATION_MODULES = ("entity", "temporal", "topic")


@dataclass(frozen=True)
class Chunk:
    index: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def turn_line(turn: Turn) -> str:
    date = T.short_date(turn.date) if turn.date else ""
    who = f"{turn.speaker}: " if turn.speaker else ""
    return f"[{date}] {who}{turn.text}" if date else f"{who}{turn.text}"


def chunk_turns(turns: Sequence[Turn], turns_per_chunk: int) -> list[Chunk]:
    """Consecutive turns of one session, `turns_per_chunk` at a time (never across sessions)."""
    if turns_per_chunk < 1:
        raise ConfigError("turns_per_chunk must be >= 1")
    chunks: list[Chunk] = []
    current: list[str] = []
    session = None
    for turn in turns:
        if current and (turn.session != session or len(current) >= turns_per_chunk):
            chunks.append(Chunk(len(chunks), tuple(current)))
            current = []
        session = turn.session
        line = turn_line(turn).replace("\n", " ").strip()
        if line:
            current.append(line)
    if current:
        chunks.append(Chunk(len(chunks), tuple(current)))
    return chunks


class MemoryIndex:
    """Chunks of one memory and their embeddings; `retrieve` is the first stage."""

    def __init__(self, chunks: list[Chunk], vectors: np.ndarray) -> None:
        if not chunks:
            raise InputError("memory is empty: nothing to index (pass at least one turn or line)")
        self.chunks, self.vectors = chunks, vectors

    @classmethod
    def build(cls, memory: Sequence[Turn] | Sequence[str] | str, ctx: ModuleContext,
              cache_dir: Path | None = None) -> MemoryIndex:
        """Index turns, a list of memory lines, or one text (one line per memory line)."""
        if isinstance(memory, str):
            memory = T.split_lines(memory)
        items = list(memory)
        if not items:
            raise InputError("memory is empty: nothing to index (pass at least one turn or line)")
        if all(isinstance(m, Turn) for m in items):
            chunks = chunk_turns(items, ctx.config.turns_per_chunk)  # type: ignore[arg-type]
        elif all(isinstance(m, str) for m in items):
            n = ctx.config.turns_per_chunk
            lines = [str(m).replace("\n", " ").strip() for m in items if str(m).strip()]
            chunks = [Chunk(i // n, tuple(lines[i:i + n])) for i in range(0, len(lines), n)]
        else:
            raise InputError("memory must be a list of Turn, a list of strings, or a string")
        if not chunks:
            raise InputError("memory is empty: all its lines are blank")
        texts = [c.text for c in chunks]
        digest = hashlib.sha256("\x00".join([ctx.config.embedding_model, *texts]).encode()
                                ).hexdigest()[:24]
        path = cache_dir / f"index-{digest}.npy" if cache_dir else None
        if path is not None and path.is_file():
            vectors = np.load(path)
        else:
            vectors = ctx.embedder.encode(texts)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, vectors)
        return cls(chunks, vectors)

    def retrieve(self, query_vec: np.ndarray, k: int) -> list[Chunk]:
        """Top-k chunks by cosine similarity, returned in memory (chronological) order."""
        scores = self.vectors @ query_vec
        top = np.argsort(-scores)[:k]
        return [self.chunks[i] for i in sorted(int(j) for j in top)]


class TierPolicy(Protocol):
    """Chooses a tier for `module` from the query and memory embeddings."""

    def choose(self, module: str, query_vec: np.ndarray, memory_vec: np.ndarray) -> str: ...


class FixedTiers:
    """A policy that always picks the given tier per module (or one tier for all)."""

    def __init__(self, tiers: str | Mapping[str, str]) -> None:
        if isinstance(tiers, str):
            tiers = dict.fromkeys(MODULES, tiers)
        unknown = set(tiers) - set(MODULES)
        if unknown:
            raise ConfigError(f"unknown memory modules {sorted(unknown)}; modules are {MODULES}")
        missing = [m for m in MODULES if m not in tiers]
        if missing:
            raise ConfigError(f"fixed tiers lack modules {missing}")
        self.tiers = {m: check_tier(t) for m, t in tiers.items()}

    def choose(self, module: str, query_vec: np.ndarray, memory_vec: np.ndarray) -> str:
        return self.tiers[module]


class RandomTiers:
    """Uniformly random tiers (the 'random' baseline), reproducible from a seed per query."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def choose(self, module: str, query_vec: np.ndarray, memory_vec: np.ndarray) -> str:
        return str(self.rng.choice(["low", "mid", "high"]))


@dataclass
class PipelineResult:
    """One query through the pipeline: the answer, the tiers taken and each module's result."""

    query: str
    answer: str
    tiers: dict[str, str]
    modules: list[ModuleResult] = field(default_factory=list)
    retrieved: str = ""
    context: str = ""
    states: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def cost_usd(self) -> float:
        return sum(m.cost_usd for m in self.modules)

    @property
    def prompt_tokens(self) -> int:
        return sum(m.prompt_tokens for m in self.modules)

    @property
    def completion_tokens(self) -> int:
        return sum(m.completion_tokens for m in self.modules)

    @property
    def latency_ms(self) -> float:
        return sum(m.latency_ms for m in self.modules)

    @property
    def calls(self) -> list[CallRecord]:
        return [c for m in self.modules for c in m.calls]

    def module(self, name: str) -> ModuleResult:
        return next(m for m in self.modules if m.module == name)


class Pipeline:
    """BudgetMem over one memory index at a time; tiers come from a `TierPolicy`."""

    def __init__(self, config: MemoryConfig | dict[str, object] | None = None, *,
                 embedder: object | None = None, memo: Memo | None = None,
                 cache_dir: Path | None = None) -> None:
        self.config = memory_config(config)
        self.ctx = ModuleContext(self.config, embedder, memo)  # type: ignore[arg-type]
        self.modules = {name: cls() for name, cls in MODULE_TYPES.items()}
        self.answerer = Answer()
        self.cache_dir = cache_dir

    def index(self, memory: Sequence[Turn] | Sequence[str] | str) -> MemoryIndex:
        return MemoryIndex.build(memory, self.ctx, self.cache_dir)

    def embed_one(self, text: str) -> np.ndarray:
        return self.ctx.embed([text])[0][0]

    def retrieve(self, query: str, index: MemoryIndex) -> tuple[str, ModuleResult]:
        start = time.perf_counter()
        qv, tokens = self.ctx.embed([query])
        chunks = index.retrieve(qv[0], self.config.top_k)
        text = "\n".join(c.text for c in chunks)
        return text, ModuleResult(module="retrieval", tier="fixed", text=text,
                                  cost_usd=self.ctx.embedding_cost(tokens), prompt_tokens=tokens,
                                  latency_ms=(time.perf_counter() - start) * 1000)

    def run(self, query: str, memory: MemoryIndex | Sequence[Turn] | Sequence[str] | str,
            policy: TierPolicy | str | Mapping[str, str],
            on_module: Callable[[ModuleResult], None] | None = None, *,
            answer: bool = True) -> PipelineResult:
        """Answer `query` over `memory`, choosing each module's tier with `policy` in order.

        With ``answer=False`` the pipeline stops after Summary: `context` is the processed
        memory for a caller that asks its own model (the Distiller hook does this).
        """
        if not isinstance(query, str) or not query.strip():
            raise InputError("query is empty")
        if not isinstance(policy, (FixedTiers, RandomTiers)) and isinstance(policy, str | Mapping):
            policy = FixedTiers(policy)
        index = memory if isinstance(memory, MemoryIndex) else self.index(memory)
        retrieved, retrieval = self.retrieve(query, index)
        out = PipelineResult(query=query, answer="", tiers={}, modules=[retrieval],
                             retrieved=retrieved)
        qv = self.embed_one(query)

        def step(name: str, memory_text: str, memory_vec: np.ndarray) -> ModuleResult:
            tier = policy.choose(name, qv, memory_vec)  # type: ignore[union-attr]
            out.tiers[name] = check_tier(tier)
            out.states[name] = (qv, memory_vec)
            result = self.modules[name].run(tier, query, memory_text, self.ctx)
            out.modules.append(result)
            if on_module:
                on_module(result)
            return result

        filtered = step("filter", retrieved, self.embed_one(retrieved)).text or retrieved
        # Downstream modules all read the filtered memory, so they share its embedding as state.
        filtered_vec = self.embed_one(filtered)
        relations = {m: step(m, filtered, filtered_vec).text for m in RELATION_MODULES}
        summary_input = summary_memory(filtered, relations)
        summary = step("summary", summary_input, filtered_vec)
        out.context = summary.text or filtered
        if not answer:
            return out
        final = self.answerer.run(query, out.context, self.ctx)
        out.modules.append(final)
        if on_module:
            on_module(final)
        out.answer = final.text
        return out


def summary_memory(filtered: str, relations: Mapping[str, str]) -> str:
    """Summary's input: resolved relation notes first (they survive truncation), then lines."""
    notes = [line for m in ("temporal", "entity", "topic")
             for line in T.split_lines(relations.get(m, ""))]
    notes = list(dict.fromkeys(notes))
    # A memory line already quoted inside a relation note would only repeat it.
    rest = [line for line in T.split_lines(filtered) if not any(line in n for n in notes)]
    return "\n".join(notes + list(dict.fromkeys(rest)))
