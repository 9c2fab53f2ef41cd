"""Prices and cost of one LLM call, from litellm's price map and litellm's own cost functions.

`register_price` adds models litellm does not know (local GGUF models, private deployments)
to that same map, with optional prompt-cache read / write prices, so every cost in agentkd
comes from one place. A call is priced from the provider's whole usage object
(`price_response`): litellm's `cost_per_token` bills cached prompt tokens at the cache-read
price, cache writes at the cache-write price, and reasoning tokens as the completion tokens
they are, the way the provider's invoice does. `TokenUsage` is that usage in litellm's
normalised shape: `prompt_tokens` counts every input token, the cached and cache-written ones
included (litellm adds Anthropic's ``cache_read_input_tokens`` / ``cache_creation_input_tokens``
to it).

A provider that states what a call cost (``usage.cost``, as OpenRouter and other gateways
return it, or litellm's ``x-litellm-response-cost`` provider header) has that figure kept in
`TokenUsage.provider_cost` beside ours; `cost_mismatch` says when the two disagree.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from dataclasses import dataclass
from typing import Any

import litellm
from litellm.cost_calculator import get_response_cost_from_hidden_params
from litellm.types.utils import (
    CompletionTokensDetailsWrapper,
    PromptTokensDetailsWrapper,
    Usage,
)

from agentkd.errors import ConfigError

_warned_unpriced: set[str] = set()
_warned_mismatch: set[str] = set()
_labels: dict[str, str] = {}
_lock = threading.Lock()
log = logging.getLogger(__name__)

MISMATCH_RELATIVE = 1e-6
MISMATCH_ABSOLUTE = 1e-9
"""A provider-stated cost further from ours than MISMATCH_RELATIVE of the larger, and than
MISMATCH_ABSOLUTE USD, is a mismatch: providers round to micro-dollars or finer."""


def register_price(model: str, input_per_mtok: float, output_per_mtok: float,
                   label: str | None = None, *, cache_read_per_mtok: float | None = None,
                   cache_write_per_mtok: float | None = None) -> None:
    """Price `model` (a litellm model string) at USD per million input / output tokens.

    `cache_read_per_mtok` / `cache_write_per_mtok` price prompt tokens read from / written
    to the provider's prompt cache; left None, such tokens are billed at the input price.
    `label` is shown beside the model in reports (e.g. "priced oracle teacher").
    """
    prices = {"input": input_per_mtok, "output": output_per_mtok,
              "cache_read": cache_read_per_mtok, "cache_write": cache_write_per_mtok}
    negative = {k: v for k, v in prices.items() if v is not None and not v >= 0}
    if negative:
        raise ConfigError(
            f"prices for {model!r} must be >= 0 USD per million tokens, got "
            + ", ".join(f"{k}={v}" for k, v in negative.items()))
    if label:
        _labels[model] = label
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    # litellm warns that custom models have no cache-token prices; irrelevant here.
    logger = logging.getLogger("LiteLLM")
    level = logger.level
    logger.setLevel(logging.ERROR)
    cache = {"cache_read_input_token_cost": _per_token(cache_read_per_mtok),
             "cache_creation_input_token_cost": _per_token(cache_write_per_mtok)}
    try:
        litellm.register_model({model: {
            "input_cost_per_token": input_per_mtok / 1e6,
            "output_cost_per_token": output_per_mtok / 1e6,
            **{key: value for key, value in cache.items() if value is not None},
            "litellm_provider": provider,
            "mode": "chat",
        }})
        # register_model merges into an existing entry: a re-registration without cache
        # prices must drop the old ones, or cached tokens keep their old discount.
        entry = litellm.model_cost.get(model, {})
        for key, value in cache.items():
            if value is None:
                entry.pop(key, None)
    finally:
        logger.setLevel(level)


def _per_token(per_mtok: float | None) -> float | None:
    return None if per_mtok is None else per_mtok / 1e6


def model_label(model: str) -> str | None:
    """The report label registered for `model`, if any."""
    return _labels.get(model)


def model_info(model: str) -> dict[str, Any] | None:
    """litellm's price entry for `model` (also found without its provider prefix)."""
    info = litellm.model_cost.get(model)
    if info is None and "/" in model:
        info = litellm.model_cost.get(model.split("/", 1)[1])
    if info is None:
        try:
            info = dict(litellm.get_model_info(model))
        except Exception:  # litellm raises several types for unknown models
            return None
    if info.get("input_cost_per_token") is None or info.get("output_cost_per_token") is None:
        return None
    return dict(info)


def price_per_token(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token for `model`, or None when litellm has no price for it."""
    info = model_info(model)
    if info is None:
        return None
    return float(info["input_cost_per_token"]), float(info["output_cost_per_token"])


@dataclass(frozen=True)
class TokenUsage:
    """The tokens of one call (or of several attempts of it) as the provider bills them."""

    prompt_tokens: int = 0
    """Every input token, those read from and written to the prompt cache included."""
    completion_tokens: int = 0
    """Every output token, reasoning tokens included."""
    cached_tokens: int = 0
    """Prompt tokens read from the provider's prompt cache (or reused from llama.cpp's KV
    cache)."""
    cache_write_tokens: int = 0
    """Prompt tokens written to the prompt cache (Anthropic bills them above the input price)."""
    reasoning_tokens: int = 0
    provider_cost: float | None = None
    """What the provider says the call cost, when it says so."""

    def __add__(self, other: TokenUsage) -> TokenUsage:
        stated = [c for c in (self.provider_cost, other.provider_cost) if c is not None]
        return TokenUsage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cached_tokens + other.cached_tokens,
            self.cache_write_tokens + other.cache_write_tokens,
            self.reasoning_tokens + other.reasoning_tokens,
            sum(stated) if stated else None)

    def litellm_usage(self, *, cache_credit: bool = True) -> Usage:
        """As a litellm `Usage` (OpenAI's shape); without `cache_credit` no token is cached."""
        details = PromptTokensDetailsWrapper(
            cached_tokens=self.cached_tokens, cache_creation_tokens=self.cache_write_tokens,
            text_tokens=self.prompt_tokens - self.cached_tokens - self.cache_write_tokens,
        ) if cache_credit and (self.cached_tokens or self.cache_write_tokens) else None
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens,
                     total_tokens=self.prompt_tokens + self.completion_tokens,
                     prompt_tokens_details=details,
                     completion_tokens_details=CompletionTokensDetailsWrapper(
                         reasoning_tokens=self.reasoning_tokens) if self.reasoning_tokens
                     else None)


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def _stated_cost(response: Any, usage: Any) -> float | None:
    cost = getattr(usage, "cost", None)
    if isinstance(cost, int | float) and not isinstance(cost, bool) and math.isfinite(cost):
        return float(cost)
    hidden = getattr(response, "_hidden_params", None)
    return get_response_cost_from_hidden_params(hidden) if isinstance(hidden, dict) else None


def usage_of(response: Any) -> TokenUsage:
    """The billed tokens of a litellm response, read from its usage object.

    Cached tokens come from ``prompt_tokens_details.cached_tokens`` (OpenAI, and Anthropic's
    ``cache_read_input_tokens`` as litellm maps them), cache writes from
    ``prompt_tokens_details.cache_creation_tokens`` or ``cache_creation_input_tokens``.
    """
    usage = getattr(response, "usage", None)
    if usage is None:
        return TokenUsage(provider_cost=_stated_cost(response, None))
    prompt = getattr(usage, "prompt_tokens_details", None)
    completion = getattr(usage, "completion_tokens_details", None)
    cached = _count(getattr(prompt, "cached_tokens", None)) or \
        _count(getattr(usage, "cache_read_input_tokens", None))
    written = (_count(getattr(prompt, "cache_creation_tokens", None))
               or _count(getattr(prompt, "cache_write_tokens", None))
               or _count(getattr(usage, "cache_creation_input_tokens", None)))
    return TokenUsage(
        prompt_tokens=_count(getattr(usage, "prompt_tokens", None)),
        completion_tokens=_count(getattr(usage, "completion_tokens", None)),
        cached_tokens=cached, cache_write_tokens=written,
        reasoning_tokens=_count(getattr(completion, "reasoning_tokens", None)),
        provider_cost=_stated_cost(response, usage))


@dataclass(frozen=True)
class Priced:
    """A call's tokens, its cost, and what it would have cost with no prompt-cache credit
    (every prompt token at the input price)."""

    usage: TokenUsage
    cost_usd: float
    uncached_cost_usd: float

    def __add__(self, other: Priced) -> Priced:
        return Priced(self.usage + other.usage, self.cost_usd + other.cost_usd,
                      self.uncached_cost_usd + other.uncached_cost_usd)


NOTHING = Priced(TokenUsage(), 0.0, 0.0)


def _priced_usage(model: str, usage: Usage, info: dict[str, Any]) -> float:
    """litellm's cost of `usage` at the prices in `info` (its own entry, so a model
    registered under a provider prefix is priced by exactly that entry)."""
    prompt, completion = litellm.cost_per_token(
        model=model, prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens, usage_object=usage,
        custom_llm_provider=str(info.get("litellm_provider") or "openai"),
        requested_model_info_override=info)  # type: ignore[arg-type]
    return float(prompt) + float(completion)


def _unpriced(model: str) -> None:
    with _lock:
        if model in _warned_unpriced:
            return
        _warned_unpriced.add(model)
    warnings.warn(
        f"no price known for model {model!r}; its calls are logged at $0. "
        f"Call agentkd.register_price({model!r}, input_per_mtok, output_per_mtok).",
        stacklevel=4,
    )


def price_usage(model: str, usage: TokenUsage, raw: Usage | None = None) -> Priced:
    """`usage` priced for `model`; $0 with a one-time warning for a model with no price.

    `raw`, the provider's own usage object, is what gets priced when given (it may carry
    more than `TokenUsage` holds, e.g. audio tokens); the uncached figure is priced from
    `usage` with its cache details dropped.
    """
    info = model_info(model)
    if info is None:
        _unpriced(model)
        return Priced(usage, 0.0, 0.0)
    cost = _priced_usage(model, raw if raw is not None else usage.litellm_usage(), info)
    uncached = _priced_usage(model, usage.litellm_usage(cache_credit=False), info) \
        if usage.cached_tokens or usage.cache_write_tokens else cost
    if usage.provider_cost is not None and cost_mismatch(cost, usage.provider_cost):
        with _lock:
            first = model not in _warned_mismatch
            _warned_mismatch.add(model)
        if first:
            log.warning("the provider billed a call to %s at $%.8f, agentkd priced it at $%.8f; "
                        "check its price (agentkd.register_price)", model,
                        usage.provider_cost, cost)
    return Priced(usage, cost, uncached)


def price_response(model: str, response: Any) -> Priced:
    """One litellm response priced from its full usage object (see `usage_of`)."""
    raw = getattr(response, "usage", None)
    return price_usage(model, usage_of(response), raw if isinstance(raw, Usage) else None)


def call_cost(model: str, prompt_tokens: int, completion_tokens: int, *,
              cached_tokens: int = 0, cache_write_tokens: int = 0) -> float:
    """USD cost of one call; 0.0 with a one-time warning for a model with no known price.

    `prompt_tokens` counts every input token, `cached_tokens` and `cache_write_tokens`
    (read from / written to the prompt cache) included.
    """
    return price_usage(model, TokenUsage(prompt_tokens, completion_tokens, cached_tokens,
                                         cache_write_tokens)).cost_usd


def cost_mismatch(ours: float, stated: float) -> bool:
    """True when a provider-stated cost disagrees with ours beyond rounding."""
    return abs(ours - stated) > max(MISMATCH_ABSOLUTE,
                                    MISMATCH_RELATIVE * max(abs(ours), abs(stated)))
