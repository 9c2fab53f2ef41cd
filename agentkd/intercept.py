"""Routing of the user's own `litellm.completion` calls into the active Distiller.

`install()` replaces `litellm.completion` / `litellm.acompletion` once per process with thin
wrappers. A call is served by a Distiller only when an episode scope is active in the
current thread or asyncio task (a contextvar) and the call is addressed to that Distiller's
teacher; every other call goes to litellm untouched.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

import litellm

from agentkd import llm
from agentkd.episode import current_episode

if TYPE_CHECKING:
    from agentkd.distiller import Distiller

_installed = False
_lock = threading.Lock()


def _target(kwargs: dict[str, Any], args: tuple[Any, ...]) -> Distiller | None:
    scope = current_episode()
    if scope is None:
        return None
    model = kwargs.get("model", args[0] if args else None)
    return scope.distiller if model == scope.distiller.teacher else None


def _split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    kwargs = dict(kwargs)
    kwargs.pop("model", None)
    rest = list(args[1:]) if args else []
    messages = kwargs.pop("messages", rest[0] if rest else None)
    return messages, kwargs


@functools.wraps(llm.raw_completion)
def completion(*args: Any, **kwargs: Any) -> Any:
    distiller = _target(kwargs, args)
    if distiller is None:
        return llm.raw_completion(*args, **kwargs)
    messages, rest = _split(args, kwargs)
    return distiller.completion(messages=messages, **rest)


@functools.wraps(llm.raw_acompletion)
async def acompletion(*args: Any, **kwargs: Any) -> Any:
    distiller = _target(kwargs, args)
    if distiller is None:
        return await llm.raw_acompletion(*args, **kwargs)
    messages, rest = _split(args, kwargs)
    return await distiller.acompletion(messages=messages, **rest)


def install() -> None:
    """Patch litellm once; idempotent and thread-safe."""
    global _installed
    with _lock:
        if not _installed:
            litellm.completion = completion
            litellm.acompletion = acompletion
            _installed = True
