"""Prices and cost of one LLM call, from litellm's price map.

`register_price` adds models litellm does not know (local GGUF models, private deployments)
to that same map, so every cost in agentkd comes from one place.
"""

from __future__ import annotations

import logging
import threading
import warnings

import litellm

from agentkd.errors import ConfigError

_warned_unpriced: set[str] = set()
_labels: dict[str, str] = {}
_lock = threading.Lock()


def register_price(model: str, input_per_mtok: float, output_per_mtok: float,
                   label: str | None = None) -> None:
    """Price `model` (a litellm model string) at USD per million input / output tokens.

    `label` is shown beside the model in reports (e.g. "priced oracle teacher").
    """
    if input_per_mtok < 0 or output_per_mtok < 0:
        raise ConfigError(
            f"prices for {model!r} must be >= 0 USD per million tokens, "
            f"got input={input_per_mtok}, output={output_per_mtok}"
        )
    if label:
        _labels[model] = label
    provider = model.split("/", 1)[0] if "/" in model else "openai"
    # litellm warns that custom models have no cache-token prices; irrelevant here.
    logger = logging.getLogger("LiteLLM")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        _register(model, provider, input_per_mtok, output_per_mtok)
    finally:
        logger.setLevel(level)


def _register(model: str, provider: str, input_per_mtok: float, output_per_mtok: float) -> None:
    litellm.register_model(
        {
            model: {
                "input_cost_per_token": input_per_mtok / 1e6,
                "output_cost_per_token": output_per_mtok / 1e6,
                "litellm_provider": provider,
                "mode": "chat",
            }
        }
    )


def model_label(model: str) -> str | None:
    """The report label registered for `model`, if any."""
    return _labels.get(model)


def price_per_token(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token for `model`, or None when litellm has no price for it."""
    info = litellm.model_cost.get(model)
    if info is None and "/" in model:
        info = litellm.model_cost.get(model.split("/", 1)[1])
    if info is None:
        try:
            info = dict(litellm.get_model_info(model))
        except Exception:  # litellm raises several types for unknown models
            return None
    inp, out = info.get("input_cost_per_token"), info.get("output_cost_per_token")
    if inp is None or out is None:
        return None
    return float(inp), float(out)


def call_cost(model: str, prompt_tokens: int, completion_tokens: int) -> float:
    """USD cost of one call; 0.0 with a one-time warning for a model with no known price."""
    price = price_per_token(model)
    if price is None:
        with _lock:
            if model not in _warned_unpriced:
                _warned_unpriced.add(model)
                warnings.warn(
                    f"no price known for model {model!r}; its calls are logged at $0. "
                    f"Call agentkd.register_price({model!r}, input_per_mtok, output_per_mtok).",
                    stacklevel=3,
                )
        return 0.0
    return prompt_tokens * price[0] + completion_tokens * price[1]
