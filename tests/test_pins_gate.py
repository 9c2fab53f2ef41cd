"""Pins of the cascade's decision: what action a message carries and whether the gate accepts.

Table-driven: each row is a message (or a step's actions) and the exact value agentkd must
derive from it, so any change to extraction, normalisation, grouping, the majority, the
threshold or the chosen sample changes a row's outcome (issue 21: these survived mutation).
"""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from agentkd.cascades import Gate, canonical_action, extract_action, normalize_action
from agentkd.cascades.signals import (
    StepSignals,
    action_logprob,
    choice_token_logprobs,
    group_actions,
    step_signals,
)
from agentkd.config import AcceptanceRule


def call(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": "c", "type": "function", "function": {"name": name, "arguments": arguments}}


def canon(*calls: tuple[str, dict[str, Any]]) -> str:
    """Tool calls as the gate compares them, written out independently of agentkd."""
    return json.dumps([{"arguments": a, "name": n} for n, a in calls], sort_keys=True,
                      separators=(",", ":"))


EXTRACTED = [
    # ReAct line: normalised (case, inner whitespace, end punctuation)
    ({"content": "Thought: the desk.\nAction: Go to  Desk 1."}, "go to desk 1"),
    ({"content": "**Action**: open drawer 2"}, "open drawer 2"),
    ({"content": "action：take mug 1"}, "take mug 1"),  # full-width colon
    ({"content": "Action: look\nThought: no.\nAction: inventory"}, "inventory"),  # the last
    ({"content": "  Action:   examine   the desk  !\n"}, "examine the desk"),
    # `> command` lines, used when there is no Action line
    ({"content": "You are in a room.\n> go to desk 1"}, "go to desk 1"),
    ({"content": "> look\n  >  Take Mug 1  \nok"}, "take mug 1"),
    ({"content": "> look\nAction: inventory"}, "inventory"),  # Action wins over '>'
    # otherwise the last non-empty line
    ({"content": "I will go.\n  go north  \n\n   \n"}, "go north"),
    ({"content": "single"}, "single"),
    ({"content": ""}, None),
    ({"content": None}, None),
    ({"content": "  \n\t\n"}, None),
    ({"content": [{"type": "text", "text": "Action: look"}]}, None),  # not a string
    ({"content": "..."}, None),  # nothing left after stripping punctuation
    # tool calls come first and compare as canonical JSON with sorted keys
    ({"content": "Action: look", "tool_calls": [call("act", '{"b": 1, "a": "X Y"}')]},
     canon(("act", {"a": "X Y", "b": 1}))),
    ({"tool_calls": [call("act", '{"a": "X Y", "b": 1}')]}, canon(("act", {"a": "X Y", "b": 1}))),
    ({"tool_calls": [call("act", {"b": 1, "a": 2})]}, canon(("act", {"a": 2, "b": 1}))),
    ({"tool_calls": [call("act", None)]}, canon(("act", {}))),
    ({"tool_calls": [call("go", '{"to": 1}'), call("take", '{"x": "mug"}')]},
     canon(("go", {"to": 1}), ("take", {"x": "mug"}))),
    ({"tool_calls": [{"name": "act", "arguments": '{"k": 1}'}]}, canon(("act", {"k": 1}))),
    ({"tool_calls": [SimpleNamespace(function=SimpleNamespace(name="act",
                                                              arguments='{"z": 0, "y": 1}'))]},
     canon(("act", {"y": 1, "z": 0}))),
    ({"tool_calls": [SimpleNamespace(id="no function")]}, None),
    ({"tool_calls": [call("act", '{"command": "go to desk')]}, None),  # truncated JSON
    ({"tool_calls": [call("act", '{"a": 1}'), call("act", '{"a": ')]}, None),
    ({"tool_calls": [], "content": "Action: look"}, "look"),  # no calls: the text
]


@pytest.mark.parametrize(("message", "expected"), EXTRACTED)
def test_the_action_a_message_carries(message, expected):
    assert extract_action(message) == expected


def test_key_order_of_tool_arguments_does_not_split_the_samples():
    a = extract_action({"tool_calls": [call("act", '{"x": 1, "y": 2}')]})
    b = extract_action({"tool_calls": [call("act", '{"y": 2, "x": 1}')]})
    assert a == b
    decision = Gate(1.0).decide([a, b])
    assert decision.accept and decision.agreement == 1.0


@pytest.mark.parametrize(("raw", "expected"), [
    ("  Go   TO\tdesk 1!!  ", "go to desk 1"),
    ('"`*look*`"', "look"),
    ("take mug 1, then", "take mug 1, then"),
    ("a.b", "a.b"),
    ("\n\r;:,.!?", ""),
])
def test_normalize_action(raw, expected):
    assert normalize_action(raw) == expected


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None),
    ("", None),
    (" ! ", None),
    ("Look Around.", "look around"),
    ('[{"name":"Act","arguments":{}}]', '[{"name":"Act","arguments":{}}]'),  # JSON as is
])
def test_canonical_action(raw, expected):
    assert canonical_action(raw) == expected


def test_a_custom_extractor_is_used_and_its_output_normalised():
    message = {"content": "ANSWER=Go North!"}
    assert extract_action(message, lambda m: m["content"].split("=", 1)[1]) == "go north"
    assert extract_action(message, lambda m: None) is None


# ---- the gate ---------------------------------------------------------------------------

A, B, C = "go to desk 1", "open drawer 2", "look"

# (threshold, actions) -> (accept, agreement, majority action, chosen index, distinct)
GATED = [
    (1.0, [A, A, A], (True, 1.0, A, 0, 1)),
    (1.0, [A, B, A], (False, 2 / 3, A, 0, 2)),
    (1.0, [B, A, A], (False, 2 / 3, A, 1, 2)),  # the first sample carrying the majority
    (0.6, [B, A, A], (True, 2 / 3, A, 1, 2)),
    (2 / 3, [C, A, A], (True, 2 / 3, A, 1, 2)),  # exactly at the threshold
    (0.67, [C, A, A], (False, 2 / 3, A, 1, 2)),
    (0.5, [A, B], (True, 0.5, A, 0, 2)),  # a tie goes to the first group seen
    (0.5, [B, A, A, B], (True, 0.5, B, 0, 2)),
    (0.5, [C, B, A, A, B], (False, 0.4, B, 1, 3)),
    (1.0, [None, A, A], (False, 2 / 3, A, 1, 1)),  # a failed sample counts against
    (0.6, [None, A, A], (True, 2 / 3, A, 1, 1)),
    (0.3, [None, None, C], (True, 1 / 3, C, 2, 1)),
    (0.1, [None, None], (False, 0.0, None, None, 0)),
    (1.0, [A], (True, 1.0, A, 0, 1)),
]


@pytest.mark.parametrize(("threshold", "actions", "expected"), GATED)
def test_gate_verdicts(threshold, actions, expected):
    d = Gate(threshold).decide(actions)
    assert (d.accept, d.agreement, d.majority_action, d.chosen_index) == pytest.approx(
        expected[:4])
    assert d.signals is not None and d.signals.distinct_actions == expected[4]
    assert d.signals.majority_share == d.agreement and d.signals.chosen == d.chosen_index


def test_no_samples_is_no_decision():
    d = Gate(0.1).decide([])
    assert (d.accept, d.agreement, d.majority_action, d.chosen_index, d.signals) == (
        False, 0.0, None, None, None)


def without_article(a: str, b: str) -> bool:
    return a.replace("the ", "") == b.replace("the ", "")


def test_equivalent_groups_actions_that_mean_the_same():
    actions = ["go to the desk", "go to desk", "go to desk"]
    plain = Gate(1.0).decide(actions)
    assert (plain.accept, plain.agreement, plain.majority_action, plain.chosen_index,
            plain.groups) == (False, pytest.approx(2 / 3), "go to desk", 1, [0, 1, 1])
    same = Gate(1.0, equivalent=without_article).decide(actions)
    assert (same.accept, same.agreement, same.majority_action, same.chosen_index,
            same.groups) == (True, 1.0, "go to the desk", 0, [0, 0, 0])


def test_equivalent_also_matches_the_demo_action():
    gate = Gate(1.0, equivalent=without_article)
    d = gate.decide(["go to the desk", None, "look"], demo_action="go to desk")
    assert d.demo_matches == [True, None, False]
    assert Gate(1.0).decide(["go to the desk", "go to desk"],
                            demo_action="go to desk").demo_matches == [False, True]
    assert Gate(1.0).decide([A, B]).demo_matches == [None, None]
    assert gate.same("x", "x") and gate.same("the x", "x") and not gate.same("x", "y")
    assert Gate(1.0).same("a", "a") and not Gate(1.0).same("the x", "x")


def on_the_list(action: str) -> bool:
    return action in {"go to desk 1", "look"}


@pytest.mark.parametrize(("actions", "accept", "agreement", "majority", "groups", "valid"), [
    # Unanimous on an action the environment would refuse: deferred, not accepted.
    (["fly 1"] * 3, False, 0.0, None, [None] * 3, [False] * 3),
    (["go to desk 1", "fly 1", "go to desk 1"], False, 2 / 3, "go to desk 1", [0, None, 0],
     [True, False, True]),
    (["go to desk 1"] * 3, True, 1.0, "go to desk 1", [0, 0, 0], [True] * 3),
    # An invalid majority does not outvote the one valid sample.
    (["fly 1", "fly 1", "look"], False, 1 / 3, "look", [None, None, 0], [False, False, True]),
    ([None, "look", "look"], False, 2 / 3, "look", [None, 0, 0], [None, True, True]),
])
def test_invalid_samples_are_dropped_before_the_vote(actions, accept, agreement, majority,
                                                     groups, valid):
    d = Gate(1.0, valid=on_the_list).decide(actions, demo_action="fly 1")
    assert (d.accept, d.agreement, d.majority_action, d.groups, d.valid) == (
        accept, pytest.approx(agreement), majority, groups, valid)
    # An invalid action never matches the demo's either: it takes no part in any signal.
    assert d.demo_matches == [None if v is not True else False for v in valid]


def test_without_a_validity_hook_every_action_votes():
    d = Gate(1.0).decide(["fly 1"] * 3)
    assert (d.accept, d.majority_action, d.valid) == (True, "fly 1", [True] * 3)


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.0001, 2.0])
def test_a_threshold_outside_zero_to_one_is_refused(threshold):
    with pytest.raises(ValueError, match=f"agreement threshold must be in \\(0, 1\\], got "
                                         f"{threshold}"):
        Gate(threshold)


def test_a_float_threshold_is_the_majority_share_rule():
    gate = Gate(0.75)
    assert gate.rule == AcceptanceRule(signal="majority_share", threshold=0.75)
    assert gate.threshold == 0.75
    rule = AcceptanceRule(signal="distinct_actions", threshold=2)
    assert Gate(rule).rule is rule and Gate(rule).threshold == 2


# (rule, actions, logprobs, demo action) -> accept
RULED = [
    (AcceptanceRule(signal="distinct_actions", threshold=2), [A, B, A], [], None, True),
    (AcceptanceRule(signal="distinct_actions", threshold=2), [A, B, C], [], None, False),
    (AcceptanceRule(signal="distinct_actions", threshold=1), [None, None], [], None, False),
    (AcceptanceRule(signal="mean_logprob", threshold=-0.5), [B, A, A], [-2.0, -0.4, -9.0],
     None, True),  # the chosen sample's (index 1) logprob
    (AcceptanceRule(signal="mean_logprob", threshold=-0.5), [A, A, B], [-0.6, -0.1, -0.1],
     None, False),
    (AcceptanceRule(signal="mean_logprob", threshold=-0.5), [A, A], [], None, False),
    (AcceptanceRule(signal="demo_agreement", threshold=1.0), [B, A, A], [], A, True),
    (AcceptanceRule(signal="demo_agreement", threshold=1.0), [B, A, A], [], B, False),
    (AcceptanceRule(signal="demo_agreement", threshold=1.0), [A, A], [], None, False),
    (AcceptanceRule(signal="majority_share", threshold=0.5), [A, B], [], None, True),
]


@pytest.mark.parametrize(("rule", "actions", "logprobs", "demo", "accept"), RULED)
def test_calibrated_rules(rule, actions, logprobs, demo, accept):
    assert Gate(rule).decide(actions, logprobs, demo).accept is accept


# ---- signals ----------------------------------------------------------------------------

def test_group_actions_numbers_groups_in_order_of_first_appearance():
    same = lambda a, b: a == b  # noqa: E731
    assert group_actions([B, None, A, B, C, A], same) == [0, None, 1, 0, 2, 1]
    assert group_actions([], same) == []
    assert group_actions([None], same) == [None]


def test_step_signals_of_the_chosen_sample():
    s = step_signals([1, 0, 0, None], [-3.0, -0.25, -0.5, None], [False, True, False, None])
    assert s == StepSignals(majority_share=0.5, distinct_actions=2, mean_logprob=-0.25,
                            demo_agreement=1.0, chosen=1)
    s = step_signals([0, 1, 1], [-1.0], [True])  # lists shorter than the samples
    assert (s.chosen, s.mean_logprob, s.demo_agreement) == (1, None, None)
    s = step_signals([0, 0], [-1.0, -2.0], [False, True])
    assert (s.mean_logprob, s.demo_agreement) == (-1.0, 0.0)
    assert step_signals([None, None]) == StepSignals(0.0, 0, None, None, None)


def test_signal_values():
    s = StepSignals(majority_share=0.5, distinct_actions=2, mean_logprob=None,
                    demo_agreement=0.0, chosen=1)
    assert s.value("distinct_actions") == 2.0 and isinstance(s.value("distinct_actions"), float)
    assert s.value("mean_logprob") is None and s.value("demo_agreement") == 0.0
    assert StepSignals(1.0, 1, -0.1, 1.0, None).value("majority_share") is None
    assert s.as_dict() == {"majority_share": 0.5, "distinct_actions": 2, "mean_logprob": None,
                           "demo_agreement": 0.0, "chosen": 1}


TOKENS = [("Thought", -0.01), (": sure", -0.02), ("\nAction: ", -0.03), ("go", -0.2),
          (" north", -0.4), (".", -1.0)]
TEXT = "".join(t for t, _ in TOKENS)


@pytest.mark.parametrize(("tokens", "text", "raw", "expected"), [
    (TOKENS, TEXT, "go north", -0.3),  # only the tokens overlapping the action
    (TOKENS, TEXT, "o nor", -0.3),  # partly covered tokens count
    (TOKENS, TEXT, "north.", -0.7),
    (TOKENS, TEXT, "jump", sum(v for _, v in TOKENS) / 6),  # not found: every token
    (TOKENS, None, "go north", sum(v for _, v in TOKENS) / 6),
    (TOKENS, TEXT, None, sum(v for _, v in TOKENS) / 6),
    ([("look", -1.0), (" x ", -0.5), ("look", -0.1)], "look x look", "look", -0.1),  # the last
    ([], TEXT, "go", None),
    (None, TEXT, "go", None),
])
def test_action_logprob(tokens, text, raw, expected):
    assert action_logprob(tokens, text, raw) == pytest.approx(expected)


@pytest.mark.parametrize(("choice", "expected"), [
    ({"logprobs": {"content": [{"token": "a", "logprob": -1}, {"token": "b", "logprob": -2}]}},
     [("a", -1.0), ("b", -2.0)]),
    (SimpleNamespace(logprobs=SimpleNamespace(content=[SimpleNamespace(token="t", logprob=-0.5)])),
     [("t", -0.5)]),
    ({"logprobs": {"content": [{"token": "a", "logprob": -1}, {"token": None, "logprob": -2}]}},
     None),
    ({"logprobs": {"content": [{"token": "a"}]}}, None),
    ({"logprobs": {"content": []}}, None),
    ({"logprobs": None}, None),
    (SimpleNamespace(), None),
])
def test_choice_token_logprobs(choice, expected):
    assert choice_token_logprobs(choice) == expected
