"""Agreement signals of one step's student samples.

Every step logs, beside the samples, each sample's equivalence group, its action's mean token
log-probability (when the provider returned logprobs) and whether it matches the nearest
retrieved demo's action and the teacher's (shadow) action. The signals are a pure function of
those per-sample facts, so calibration can recompute them for any prefix of the samples (a
run logged with N samples also shows what N' < N would have done):

- ``majority_share``: share of samples on the majority action (the paper's agreement);
- ``distinct_actions``: number of distinct actions among the samples;
- ``mean_logprob``: the chosen sample's mean token log-probability over its action;
- ``demo_agreement``: 1.0 when the chosen action is the nearest demo's action, 0.0 when not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

TokenLogprobs = list[tuple[str, float]]
"""One sample's generated tokens with their log-probabilities, in order."""


@dataclass(frozen=True)
class StepSignals:
    """The signals of one step (see the module docstring); `chosen` is the first sample
    carrying the majority action, None when no sample carried an action."""

    majority_share: float
    distinct_actions: int
    mean_logprob: float | None
    demo_agreement: float | None
    chosen: int | None

    def value(self, signal: str) -> float | None:
        if self.chosen is None:
            return None  # no action to accept, whatever the signal
        value = getattr(self, signal)
        return None if value is None else float(value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def group_actions(actions: Sequence[str | None], same: Any) -> list[int | None]:
    """The equivalence group of each action (numbered in order of first appearance); None
    for a sample with no action. `same(a, b)` says when two actions mean the same."""
    representatives: list[str] = []
    groups: list[int | None] = []
    for action in actions:
        if action is None:
            groups.append(None)
            continue
        for g, representative in enumerate(representatives):
            if same(representative, action):
                groups.append(g)
                break
        else:
            representatives.append(action)
            groups.append(len(representatives) - 1)
    return groups


def step_signals(groups: Sequence[int | None], logprobs: Sequence[float | None] = (),
                 demo_matches: Sequence[bool | None] = ()) -> StepSignals:
    """Signals of samples given as groups (see `group_actions`), per-sample action logprobs
    and per-sample matches with the nearest demo's action (both may be empty)."""
    counts: dict[int, int] = {}
    first: dict[int, int] = {}
    for i, group in enumerate(groups):
        if group is not None:
            counts[group] = counts.get(group, 0) + 1
            first.setdefault(group, i)
    if not counts:
        return StepSignals(0.0, 0, None, None, None)
    # Ties go to the group whose first sample came first, as the paper's gate does.
    best = min(counts, key=lambda g: (-counts[g], first[g]))
    chosen = first[best]
    logprob = logprobs[chosen] if chosen < len(logprobs) else None
    demo = demo_matches[chosen] if chosen < len(demo_matches) else None
    return StepSignals(
        majority_share=counts[best] / len(groups), distinct_actions=len(counts),
        mean_logprob=logprob, demo_agreement=None if demo is None else float(demo),
        chosen=chosen)


def choice_token_logprobs(choice: Any) -> TokenLogprobs | None:
    """The (token, logprob) pairs of a litellm choice, or None when it carries none."""
    logprobs = choice.get("logprobs") if isinstance(choice, dict) else getattr(
        choice, "logprobs", None)
    content = (logprobs.get("content") if isinstance(logprobs, dict)
               else getattr(logprobs, "content", None))
    if not content:
        return None
    pairs: TokenLogprobs = []
    for item in content:
        token = item.get("token") if isinstance(item, dict) else getattr(item, "token", None)
        value = item.get("logprob") if isinstance(item, dict) else getattr(item, "logprob", None)
        if token is None or value is None:
            return None
        pairs.append((str(token), float(value)))
    return pairs


def action_logprob(tokens: TokenLogprobs | None, text: str | None,
                   raw_action: str | None) -> float | None:
    """Mean token log-probability of the action inside a sample.

    The tokens that overlap the last occurrence of `raw_action` (the extractor's output
    before normalising) in the sample's text are averaged, so a long, confident preamble
    cannot mask an unsure action; when the action cannot be located in the tokens (tool
    calls, a text that is not the tokens' concatenation) every token counts.
    """
    if not tokens:
        return None
    spans: list[tuple[int, int, float]] = []
    offset = 0
    for token, value in tokens:
        spans.append((offset, offset + len(token), value))
        offset += len(token)
    joined = "".join(t for t, _ in tokens)
    start = joined.rfind(raw_action) if raw_action and text is not None else -1
    if start >= 0:
        end = start + len(raw_action or "")
        inside = [v for lo, hi, v in spans if lo < end and hi > start]
        if inside:
            return sum(inside) / len(inside)
    return sum(v for _, _, v in spans) / len(spans)
