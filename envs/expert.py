"""`alfworld/expert`: ALFWorld's handcoded expert as a litellm custom provider.

It flows through exactly the same code path as an LLM teacher: the Distiller calls
`litellm.completion(model="alfworld/expert", ...)` and gets a ReAct-shaped answer
("Action: <command>") for the game running in the caller's thread (see
`agentkd.envs.alfworld.current_expert_action`). Its tokens are counted on the prompt it was
given with a GPT-4o tokenizer and priced like a frontier model (Claude Sonnet 4.5 list price by
default, `set_expert_price` to change), so reports compare like with like; runs using it are
labelled "priced oracle teacher".
"""

from __future__ import annotations

import threading
import time
from typing import Any

import litellm
from litellm import CustomLLM
from litellm.types.utils import Choices, Message, ModelResponse, Usage

from agentkd.costs import register_price
from agentkd.envs.alfworld import current_expert_action
from agentkd.errors import InputError

EXPERT_MODEL = "alfworld/expert"
ORACLE_LABEL = "priced oracle teacher"
DEFAULT_PRICE = (3.0, 15.0)  # USD per Mtok in/out: Claude Sonnet 4.5's list price
_TOKENIZER_MODEL = "gpt-4o"
_registered = False
_lock = threading.Lock()


class AlfWorldExpert(CustomLLM):
    """Answers with the handcoded expert's next action for the current game."""

    def completion(self, model: str, messages: list[dict[str, Any]], *args: Any,
                   **kwargs: Any) -> ModelResponse:
        action = current_expert_action.get()
        if action is None:
            raise InputError(
                "alfworld/expert can only act inside an ALFWorld episode: create an "
                "agentkd.envs.AlfWorldEnv and reset() it in the same thread before calling it")
        n = int((kwargs.get("optional_params") or {}).get("n") or 1)
        text = f"Action: {action}"
        prompt_tokens = litellm.token_counter(model=_TOKENIZER_MODEL, messages=messages)
        completion_tokens = litellm.token_counter(model=_TOKENIZER_MODEL, text=text,
                                                  count_response_tokens=True)
        return ModelResponse(
            model=EXPERT_MODEL, created=int(time.time()),
            choices=[Choices(index=i, finish_reason="stop",
                             message=Message(role="assistant", content=text)) for i in range(n)],
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens * n,
                        total_tokens=prompt_tokens + completion_tokens * n),
        )

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)


def set_expert_price(input_per_mtok: float, output_per_mtok: float) -> None:
    """Price the expert's tokens (USD per million) — e.g. at the teacher it stands in for."""
    register_price(EXPERT_MODEL, input_per_mtok, output_per_mtok, label=ORACLE_LABEL)


def register() -> None:
    """Add the `alfworld` provider to litellm (idempotent) with the default price."""
    global _registered
    with _lock:
        if _registered:
            return
        litellm.custom_provider_map = [
            *[p for p in litellm.custom_provider_map if p.get("provider") != "alfworld"],
            {"provider": "alfworld", "custom_handler": AlfWorldExpert()},
        ]
        set_expert_price(*DEFAULT_PRICE)
        _registered = True
