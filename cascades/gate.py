"""The gate: accept the student's majority action when enough samples agree, else defer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

Equivalence = Callable[[str, str], bool]
"""Says whether two (normalised) actions mean the same thing."""


@dataclass(frozen=True)
class Decision:
    """The gate's verdict on one step's samples."""

    accept: bool
    agreement: float
    majority_action: str | None
    chosen_index: int | None  # first sample that carries the majority action


class Gate:
    """Accept when the share of samples on the majority action is >= `threshold`.

    Samples with no action (None) count against agreement. `equivalent` groups actions that
    differ in text but mean the same; by default actions must be identical after normalising.
    """

    def __init__(self, threshold: float = 1.0, equivalent: Equivalence | None = None) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"agreement threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.equivalent = equivalent

    def _same(self, a: str, b: str) -> bool:
        return a == b or (self.equivalent is not None and self.equivalent(a, b))

    def decide(self, actions: Sequence[str | None]) -> Decision:
        if not actions:
            return Decision(False, 0.0, None, None)
        groups: list[list[int]] = []  # indices of samples, grouped by equivalent action
        for i, action in enumerate(actions):
            if action is None:
                continue
            for group in groups:
                representative = actions[group[0]]
                if representative is not None and self._same(representative, action):
                    group.append(i)
                    break
            else:
                groups.append([i])
        if not groups:
            return Decision(False, 0.0, None, None)
        # Ties go to the group whose first sample came first (max keeps the earliest).
        best = max(groups, key=len)
        agreement = len(best) / len(actions)
        return Decision(agreement >= self.threshold - 1e-9, agreement, actions[best[0]], best[0])
