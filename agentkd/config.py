"""Configuration models: what a user can set, validated at the boundary.

Out-of-range values fail here with a message that names the field and the allowed range,
instead of surfacing later as a confusing provider error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

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


Signal = Literal["majority_share", "distinct_actions", "mean_logprob", "demo_agreement"]
SIGNALS: tuple[str, ...] = ("majority_share", "distinct_actions", "mean_logprob",
                            "demo_agreement")


class AcceptanceRule(_Frozen):
    """Accept the student's majority action when one agreement signal passes a threshold.

    Signals (see `agentkd.cascades.signals`): ``majority_share`` (share of samples on the
    majority action), ``distinct_actions`` (accepted when *at most* `threshold`),
    ``mean_logprob`` (the chosen sample's mean token log-probability over its action) and
    ``demo_agreement`` (1 when the majority action is the nearest demo's action, else 0).
    A signal the step lacks (no logprobs, no demos) never accepts.
    """

    signal: Signal = "majority_share"
    threshold: float = Field(1.0, allow_inf_nan=False)

    def accepts(self, value: float | None) -> bool:
        if value is None:
            return False
        if self.signal == "distinct_actions":
            return value <= self.threshold + 1e-9
        return value >= self.threshold - 1e-9


class Cascade(_Frozen):
    """Self-consistency cascade: sample the student `samples` times, defer when they disagree.

    `agreement` is the share of samples that must carry the majority action for the
    student's answer to be accepted; 1.0 (unanimous) is the paper's rule. A calibrated
    `rule` (written by `agentkd calibrate`) replaces it with any signal and threshold.
    `shadow` is the share of steps on which the teacher is also asked, its action logged
    beside the student's as a label, without changing what the agent receives.
    """

    samples: int = Field(3, ge=1, le=32)
    temperature: float = Field(0.1, ge=0.0, le=2.0)
    agreement: float = Field(1.0, gt=0.0, le=1.0)
    sampling: Literal["auto", "n", "parallel"] = "auto"
    """How to get the samples: one request with ``n`` ("n"), concurrent single requests
    ("parallel"), or "auto": ``n`` where litellm says the provider supports it."""
    rule: AcceptanceRule | None = None
    shadow: float = Field(0.0, ge=0.0, le=1.0)
    shadow_seed: int | None = None
    """Seed of the draw that picks shadow steps (None: a fresh one per Distiller)."""
    logprobs: Literal["auto", "on", "off"] = "auto"
    """Ask the student for token log-probabilities: "auto" where the provider is known to
    return them (OpenAI-compatible and ``local/`` models), "on" always, "off" never."""
    defer_loops: bool = False
    """Also defer when the accepted action was already taken on the same observation in this
    episode: small students agree with themselves while going round in circles."""
    defer_repeats: int | None = Field(None, ge=1)
    """Also defer when the accepted action was already taken this many times in the episode,
    by anyone, on any observation: a student fixed on one place walks back to it after every
    teacher step, undoing the teacher's progress on observations that are new each time."""
    cache_prefix: bool = True
    """Let the student's samples share a prompt cache where the provider needs asking
    (Anthropic-family models): mark the system message with its demos, and the whole prompt,
    with ``cache_control``, and send the first sample before the others so they read the
    prompt it cached (`agentkd.llm.sample`; one extra round trip of latency). Other
    providers are left as they are."""

    @property
    def acceptance(self) -> AcceptanceRule:
        """The rule in force: `rule`, else majority share >= `agreement`."""
        return self.rule or AcceptanceRule(signal="majority_share", threshold=self.agreement)


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


def load_cascade(path: str | Path) -> Cascade:
    """A `Cascade` from a cascade config file (JSON): the file `agentkd calibrate` writes
    (``{"cascade": {...}, "calibration": {...}}``) or a bare cascade object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"cascade config {path} does not exist (write one with "
                          f"`agentkd calibrate ... --out {path}`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cascade config {path} is not readable JSON: {exc}") from None
    if isinstance(data, dict) and "cascade" in data:
        data = data["cascade"]
    return validated(Cascade, data, f"cascade in {path}")  # type: ignore[return-value]


def save_cascade(path: str | Path, cascade: Cascade,
                 calibration: dict[str, Any] | None = None) -> Path:
    """Write `cascade` (with how it was calibrated, for people) where `load_cascade` reads it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body: dict[str, Any] = {"cascade": cascade.model_dump(mode="json")}
    if calibration is not None:
        body["calibration"] = calibration
    path.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
    return path


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode
