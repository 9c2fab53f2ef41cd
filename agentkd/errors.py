"""The exceptions agentkd raises at its public boundary.

Every error a user can trigger names what is wrong and how to fix it; none of them
carries an API key (messages pass through `agentkd.secrets.scrub`).
"""

from __future__ import annotations

from agentkd.secrets import scrub


class AgentKDError(Exception):
    """Base class of every error agentkd raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(scrub(message))


class ConfigError(AgentKDError, ValueError):
    """A configuration value is missing, out of range or inconsistent."""


class MissingLogError(ConfigError):
    """A command that only reads the log was pointed at a database that holds none: a
    SQLite file that does not exist, or a database without agentkd's tables."""


class InputError(AgentKDError, ValueError):
    """Input handed to agentkd (messages, files, stores) has the wrong shape."""


class TeacherError(AgentKDError):
    """The teacher model failed after its retry budget; the step could not be served."""


class BudgetExceeded(AgentKDError):
    """A spending or step cap was reached; everything so far is in the log.

    `scope` says which cap: "episode" (the episode is logged with status "budget") or "run"
    (the episode in progress is logged as "interrupted", so a resumed run replays it).
    """

    def __init__(self, message: str, scope: str = "episode") -> None:
        super().__init__(message)
        self.scope = scope

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # keep `scope` across processes
        return (type(self), (str(self), self.scope))


class LocalModelError(AgentKDError):
    """A local llama.cpp model cannot run on this machine: it crashed llama.cpp in a probe
    child process, or its file does not load. The message names the model, the cause and
    the fix."""


class StoreError(AgentKDError):
    """A demo store is missing, corrupted, or was built with another embedding model."""
