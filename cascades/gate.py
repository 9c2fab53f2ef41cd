"""The gate: accept the student's majority action when an agreement signal passes, else defer.

The default rule is the paper's: the share of samples on the majority action must reach a
threshold (1.0 = unanimous). A calibrated `AcceptanceRule` may use any signal of
`agentkd.cascades.signals` instead. Where the environment can tell a valid action from an
invalid one (a `Validity` hook), invalid samples are dropped before the vote, as in the
agent-distillation paper's self-consistent action generation: they count against agreement,
so a student unanimous on a command the environment would refuse is deferred.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agentkd.cascades.signals import StepSignals, group_actions, step_signals
from agentkd.config import AcceptanceRule

Equivalence = Callable[[str, str], bool]
"""Says whether two (normalised) actions mean the same thing."""
Validity = Callable[[str], bool]
"""Says whether a (normalised) action is one the environment can take now."""


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on one step's samples."""

    accept: bool
    agreement: float
    majority_action: str | None
    chosen_index: int | None  # first sample that carries the majority action
    signals: StepSignals | None = None
    groups: list[int | None] = field(default_factory=list)
    demo_matches: list[bool | None] = field(default_factory=list)
    valid: list[bool | None] = field(default_factory=list)
    """Per sample: whether its action passed the validity hook (None: no action)."""


class Gate:
    """Accept when the step's signals pass `rule` (a float: majority share >= it).

    Samples with no action (None) count against agreement, and so do samples whose action
    `valid` rejects. `equivalent` groups actions that differ in text but mean the same; by
    default actions must be identical after normalising.
    """

    def __init__(self, rule: AcceptanceRule | float = 1.0,
                 equivalent: Equivalence | None = None,
                 valid: Validity | None = None) -> None:
        if not isinstance(rule, AcceptanceRule):
            if not 0.0 < rule <= 1.0:
                raise ValueError(f"agreement threshold must be in (0, 1], got {rule}")
            rule = AcceptanceRule(signal="majority_share", threshold=rule)
        self.rule = rule
        self.equivalent = equivalent
        self.valid = valid

    @property
    def threshold(self) -> float:
        return self.rule.threshold

    def same(self, a: str, b: str) -> bool:
        return a == b or (self.equivalent is not None and self.equivalent(a, b))

    def decide(self, actions: Sequence[str | None], logprobs: Sequence[float | None] = (),
               demo_action: str | None = None) -> Decision:
        """Judge the samples' `actions`, with each sample's action logprob where known and
        the nearest retrieved demo's action where there is one."""
        if not actions:
            return Decision(False, 0.0, None, None)
        valid = [None if a is None else self.valid is None or self.valid(a) for a in actions]
        voting = [a if ok else None for a, ok in zip(actions, valid, strict=True)]
        groups = group_actions(voting, self.same)
        demo_matches: list[bool | None] = [
            None if demo_action is None or a is None else self.same(a, demo_action)
            for a in voting]
        signals = step_signals(groups, logprobs, demo_matches)
        chosen = signals.chosen
        return Decision(
            accept=self.rule.accepts(signals.value(self.rule.signal)),
            agreement=signals.majority_share,
            majority_action=actions[chosen] if chosen is not None else None,
            chosen_index=chosen, signals=signals, groups=groups, demo_matches=demo_matches,
            valid=valid)
