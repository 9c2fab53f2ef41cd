"""The `alfworld` litellm custom provider: ALFWorld's offline teachers as model strings.

- `alfworld/expert`: ALFWorld's handcoded expert, as it is (it tracks its own plan, so it rarely
  recovers once another agent has acted, and loses most pick_two games).
- `alfworld/rescue`: the rescuing expert (`agentkd.envs.rescue`): the same task policies
  re-read from the episode's transcript before every act, so it acts from any state knowing
  only what an LLM reading the history would know.
- `alfworld/planner`: alfworld's PDDL planner (fast-downward) on the game's full state. It
  knows where hidden objects are: an upper bound, not a fair teacher.

Each flows through exactly the same code path as an LLM teacher: the Distiller calls
`litellm.completion(model="alfworld/rescue", ...)` and gets a ReAct-shaped answer
("Action: <command>") for the game running in the caller's thread (see
`agentkd.envs.alfworld.current_game`). Tokens are counted on the prompt it was given with a
GPT-4o tokenizer and priced like a frontier model (Claude Sonnet 4.5 list price by default,
`set_expert_price` to change), so reports compare like with like; reports label the experts
"priced oracle teacher" and the planner "full-state oracle (PDDL planner)".
"""

from __future__ import annotations

import threading
import time
from typing import Any

import litellm
from litellm import CustomLLM
from litellm.types.utils import Choices, Message, ModelResponse, Usage

from agentkd.costs import register_price
from agentkd.envs.alfworld import TEACHERS, current_game
from agentkd.errors import InputError

EXPERT_MODEL = "alfworld/expert"
RESCUE_MODEL = "alfworld/rescue"
PLANNER_MODEL = "alfworld/planner"
MODELS = tuple(f"alfworld/{teacher}" for teacher in TEACHERS)
ORACLE_LABEL = "priced oracle teacher"
PLANNER_LABEL = "full-state oracle (PDDL planner)"
DEFAULT_PRICE = (3.0, 15.0)  # USD per Mtok in/out: Claude Sonnet 4.5's list price
_TOKENIZER_MODEL = "gpt-4o"
_registered = False
_lock = threading.Lock()


class AlfWorldExpert(CustomLLM):
    """Answers with the named teacher's next action for the current game."""

    def completion(self, model: str, messages: list[dict[str, Any]], *args: Any,
                   **kwargs: Any) -> ModelResponse:
        teacher = model.rsplit("/", 1)[-1]  # litellm may or may not strip the provider
        if teacher not in TEACHERS:
            raise InputError(f"unknown ALFWorld teacher alfworld/{teacher}; choose one of "
                             f"{', '.join(MODELS)}")
        game = current_game.get()
        action = game.teacher_action(teacher) if game is not None else None
        if action is None:
            raise InputError(
                f"alfworld/{teacher} can only act inside an ALFWorld episode: create an "
                "agentkd.envs.AlfWorldEnv and reset() it in the same thread before calling it")
        n = int((kwargs.get("optional_params") or {}).get("n") or 1)
        text = f"Action: {action}"
        prompt_tokens = litellm.token_counter(model=_TOKENIZER_MODEL, messages=messages)
        completion_tokens = litellm.token_counter(model=_TOKENIZER_MODEL, text=text,
                                                  count_response_tokens=True)
        return ModelResponse(
            model=f"alfworld/{teacher}", created=int(time.time()),
            choices=[Choices(index=i, finish_reason="stop",
                             message=Message(role="assistant", content=text)) for i in range(n)],
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens * n,
                        total_tokens=prompt_tokens + completion_tokens * n),
        )

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)


def set_expert_price(input_per_mtok: float, output_per_mtok: float) -> None:
    """Price the ALFWorld teachers' tokens (USD per million) — e.g. at the teacher they stand
    in for."""
    for model in MODELS:
        label = PLANNER_LABEL if model == PLANNER_MODEL else ORACLE_LABEL
        register_price(model, input_per_mtok, output_per_mtok, label=label)


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
