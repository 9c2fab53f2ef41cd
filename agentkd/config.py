"""Configuration models: what a user can set, validated at the boundary.

Out-of-range values fail here with a message that names the field and the allowed range,
instead of surfacing later as a confusing provider error.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agentkd.errors import ConfigError

Mode = Literal["teacher", "collect", "student", "icd", "distill"]
MODES: tuple[str, ...] = ("teacher", "collect", "student", "icd", "distill")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, value: object, info: ValidationInfo) -> object:
        # pydantic reads True as 1: `k: yes` in a config file must not mean k=1.
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and field.annotation is not bool:
            raise ValueError("expected a number, got a boolean")
        return value


class Cascade(_Frozen):
    """Self-consistency cascade: sample the student `samples` times, defer when they disagree.

    `agreement` is the share of samples that must carry the majority action for the
    student's answer to be accepted; 1.0 (unanimous) is the paper's rule.
    """

    samples: int = Field(3, ge=1, le=32)
    temperature: float = Field(0.1, ge=0.0, le=2.0)
    agreement: float = Field(1.0, gt=0.0, le=1.0)
    sampling: Literal["auto", "n", "parallel"] = "auto"
    """How to get the samples: one request with ``n`` ("n"), concurrent single requests
    ("parallel"), or "auto": ``n`` where litellm says the provider supports it."""


class KeyWeights(_Frozen):
    """Weights of the retrieval key's parts in the similarity score."""

    goal: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)
    plan: float = Field(default=0.5, ge=0.0, allow_inf_nan=False)
    observation: float = Field(default=1.0, ge=0.0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _some_weight(self) -> KeyWeights:
        # All-zero weights score every demo 0: retrieval would return arbitrary steps.
        if not (self.goal or self.plan or self.observation):
            raise ValueError("at least one of goal, plan, observation must be > 0")
        return self


class Retrieval(_Frozen):
    """Step-level demo retrieval: k windows of teacher steps around the best-matching steps."""

    k: int = Field(6, ge=1, le=100)
    window_before: int = Field(2, ge=0, le=50)
    window_after: int = Field(1, ge=0, le=50)
    max_hits_per_episode: int = Field(1, ge=1)
    weights: KeyWeights = KeyWeights()
    placement: Literal["system", "before_observation"] = "system"


class Budget(_Frozen):
    """Spending and step caps; `None` means no cap."""

    max_usd_per_episode: float | None = Field(None, gt=0)
    max_usd_per_run: float | None = Field(None, gt=0)
    max_steps_per_episode: int | None = Field(None, ge=1)


def validated(model: type[_Frozen], value: object, name: str) -> _Frozen:
    """Coerce a user value (model instance, dict or None) into `model`, with a clear error."""
    if value is None:
        return model()
    if isinstance(value, model):
        return value
    if isinstance(value, dict):
        try:
            return model(**value)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
            )
            raise ConfigError(f"invalid {name}: {problems}") from None
    raise ConfigError(
        f"{name} must be an agentkd.{model.__name__} or a dict, got {type(value).__name__}"
    )


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode
