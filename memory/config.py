"""BudgetMem configuration: tier names, tiering strategies, models, budgets and nominal prices.

Everything a user can set about the memory pipeline lives in `MemoryConfig` and is validated
here, so a bad value fails with a message that names the field instead of deep in a module.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agentkd.errors import ConfigError

TIERS: tuple[str, ...] = ("low", "mid", "high")
MODULES: tuple[str, ...] = ("filter", "entity", "temporal", "topic", "summary")
STRATEGIES: tuple[str, ...] = ("implementation", "capacity", "reasoning")

Tier = Literal["low", "mid", "high"]
Strategy = Literal["implementation", "capacity", "reasoning"]

SMOLLM = "local/smollm2-135m"
QWEN_SMALL = "local/qwen2.5-coder-0.5b"
QWEN = "local/qwen2.5-coder-1.5b"

# Nominal USD per million (input, output) tokens for the offline models, used only when the
# price map knows nothing about them (agentkd.local_models registers the same figures): with
# $0 everywhere the cost term of the reward would be meaningless.
DEFAULT_FALLBACK_PRICES: dict[str, tuple[float, float]] = {
    SMOLLM: (0.01, 0.02),
    QWEN_SMALL: (0.02, 0.04),
    QWEN: (0.05, 0.10),
}


def check_tier(tier: str) -> str:
    """`tier` if it names a tier, else a ConfigError listing the tiers."""
    if tier not in TIERS:
        raise ConfigError(f"unknown tier {tier!r}; choose one of: {', '.join(TIERS)}")
    return tier


def check_module(module: str) -> str:
    if module not in MODULES:
        raise ConfigError(f"unknown memory module {module!r}; choose one of: {', '.join(MODULES)}")
    return module


class MemoryConfig(BaseModel):
    """Settings of one BudgetMem pipeline.

    `strategy` picks how the tiers differ:

    - ``implementation``: Low = rules, Mid = embedding scoring, High = an LLM call
      (`high_model`) on top of the Mid evidence;
    - ``capacity``: every tier is the same LLM prompt; Low/Mid/High use `capacity_models`,
      by default three sizes of offline model that run on a CPU: SmolLM2-135M (Low),
      Qwen2.5-Coder-0.5B (Mid, the cheap Qwen) and Qwen2.5-Coder-1.5B (High, the large one),
      so cost and capacity both rise with the tier;
    - ``reasoning``: every tier calls `reasoning_model`; Low = direct prompt, Mid =
      chain-of-thought, High = plan-act-reflect (a draft call then a reflect call).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = "implementation"
    high_model: str = SMOLLM
    capacity_models: dict[str, str] = Field(
        default_factory=lambda: {"low": SMOLLM, "mid": QWEN_SMALL, "high": QWEN})
    reasoning_model: str = SMOLLM
    answer_model: str = SMOLLM
    module_max_tokens: int = Field(default=48, ge=1, le=4096)
    answer_max_tokens: int = Field(default=16, ge=1, le=4096)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    # Chunking and first-stage retrieval.
    turns_per_chunk: int = Field(default=2, ge=1, le=50)
    top_k: int = Field(default=5, ge=1, le=100)
    # Cap on the words handed to the answer call (and to each LLM module), so prompt cost
    # stays bounded whatever the tiers produced.
    context_words: int = Field(default=160, ge=10, le=100_000)
    embedding_model: str = "all-MiniLM-L6-v2"
    # Embedding tokens are billed so Mid costs more than Low; MiniLM (22M parameters) is priced
    # at SmolLM2's nominal rate scaled by parameter count (~0.16 × 0.01 USD/Mtok).
    embedding_usd_per_mtok: float = Field(default=0.002, ge=0.0)
    fallback_prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: dict(DEFAULT_FALLBACK_PRICES))
    llm_kwargs: dict[str, object] = Field(default_factory=dict)

    def model_for(self, tier: str) -> str:
        """The LLM a module calls at `tier` under this strategy (implementation: High only)."""
        check_tier(tier)
        if self.strategy == "capacity":
            return self.capacity_models[tier]
        if self.strategy == "reasoning":
            return self.reasoning_model
        return self.high_model

    def models(self) -> set[str]:
        if self.strategy == "capacity":
            used = set(self.capacity_models.values())
        elif self.strategy == "reasoning":
            used = {self.reasoning_model}
        else:
            used = {self.high_model}
        return used | {self.answer_model}


def memory_config(value: MemoryConfig | dict[str, object] | None = None) -> MemoryConfig:
    """Coerce a user value into a `MemoryConfig` with a readable ConfigError."""
    if value is None:
        return MemoryConfig()
    if isinstance(value, MemoryConfig):
        return value
    if not isinstance(value, dict):
        raise ConfigError(
            f"memory config must be a MemoryConfig or dict, got {type(value).__name__}")
    try:
        config = MemoryConfig(**value)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ConfigError(f"invalid memory config: {problems}") from None
    missing = [t for t in TIERS if t not in config.capacity_models]
    if missing:
        raise ConfigError(f"capacity_models needs a model string for tiers {missing}")
    return config
