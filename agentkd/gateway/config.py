"""The gateway's configuration: routes (a teacher, its student and mode), upstream kwargs for
passed-through models, gateway keys with their budgets, and where to listen.

It is read from `agentkd serve`'s flags or from a TOML file (``--config gateway.toml``)::

    log = "sqlite:///gateway.db"
    idle_timeout_s = 600

    [[route]]
    teacher = "anthropic/claude-sonnet-4-5"
    student = "openai/gpt-4.1-mini"
    mode = "distill"
    demos = "demos/"
    aliases = ["claude-sonnet-4-5"]          # other names clients may ask for

    [upstream."openai/gpt-4.1"]                # kwargs for a passed-through model
    api_base = "https://example.internal/v1"

    [[key]]
    name = "ci"
    key_env = "AGENTKD_KEY_CI"                 # the bearer token, read from the environment
    max_usd = 5.0
    max_requests_per_minute = 600
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentkd.config import check_mode
from agentkd.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def with_env(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """litellm kwargs with each ``<name>_env`` entry replaced by ``<name>`` read from that
    environment variable (``api_key_env = "OPENAI_KEY_B"``), so no key sits in a config file."""
    out = {}
    for name, value in kwargs.items():
        if name.endswith("_env") and isinstance(value, str):
            resolved = os.environ.get(value)
            if not resolved:
                raise ConfigError(f"{where}: {name} names ${value}, which is not set")
            out[name[:-4]] = resolved
        else:
            out[name] = value
    return out


class Route(_Strict):
    """A teacher model served through a Distiller; requests naming it (or an alias) are
    agent steps."""

    teacher: str
    student: str | None = None
    mode: str = "distill"
    demos: str | None = None
    cascade: dict[str, Any] | str | None = None
    retrieval: dict[str, Any] | None = None
    budget: dict[str, Any] | None = None
    aliases: list[str] = Field(default_factory=list)
    run: str | None = None
    teacher_kwargs: dict[str, Any] = Field(default_factory=dict)
    student_kwargs: dict[str, Any] = Field(default_factory=dict)
    teacher_retries: int = 2

    @model_validator(mode="after")
    def _mode(self) -> Route:
        check_mode(self.mode)
        return self

    @property
    def names(self) -> list[str]:
        return [self.teacher, *self.aliases]


class GatewayKey(_Strict):
    """A bearer token clients present, and its limits (per worker process)."""

    name: str
    key: str | None = None
    key_env: str | None = None
    max_usd: float | None = Field(default=None, ge=0)
    max_requests_per_minute: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_source(self) -> GatewayKey:
        if (self.key is None) == (self.key_env is None):
            raise ValueError(f"key {self.name!r} needs exactly one of 'key' or 'key_env'")
        return self

    def token(self) -> str:
        """The bearer token; a `key_env` that is unset is a configuration error."""
        if self.key is not None:
            return self.key
        assert self.key_env is not None
        value = os.environ.get(self.key_env)
        if not value:
            raise ConfigError(f"gateway key {self.name!r} reads its token from ${self.key_env}, "
                              f"which is not set; export it or give 'key' in the config")
        return value


class GatewayConfig(_Strict):
    """Everything `agentkd serve` needs; see the module docstring for the TOML shape."""

    log: str = "sqlite:///agentkd.db"
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    route: list[Route] = Field(default_factory=list)
    upstream: dict[str, dict[str, Any]] = Field(default_factory=dict)
    key: list[GatewayKey] = Field(default_factory=list)
    passthrough: bool = True
    idle_timeout_s: float = Field(default=600.0, gt=0)
    max_body_bytes: int = Field(default=8_000_000, ge=1024)
    threads: int = Field(default=64, ge=1, le=1024)
    passthrough_run: str | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> GatewayConfig:
        seen: set[str] = set()
        for route in self.route:
            for name in route.names:
                if name in seen:
                    raise ValueError(f"model name {name!r} is served by two routes")
                seen.add(name)
        return self


def load_config(path: str | Path, **overrides: Any) -> GatewayConfig:
    """Read a gateway TOML file; `overrides` (flags given on the command line) win."""
    file = Path(path)
    try:
        data = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no gateway config at {file}; check --config") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"gateway config {file} is not valid TOML: {exc}") from None
    data.update({k: v for k, v in overrides.items() if v is not None})
    return build_config(data, str(file))


def build_config(data: dict[str, Any], source: str = "the gateway options") -> GatewayConfig:
    """Validate `data` into a `GatewayConfig`, with an error naming the bad field."""
    try:
        return GatewayConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise ConfigError(f"{source}: {where}: {first['msg']}") from None
