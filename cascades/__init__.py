"""Self-consistency cascade: action extraction, agreement, the gate that picks who acts."""

from agentkd.cascades.actions import (
    ActionExtractor,
    canonical_action,
    default_extractor,
    extract_action,
    normalize_action,
)
from agentkd.cascades.gate import Decision, Equivalence, Gate, Validity

__all__ = [
    "ActionExtractor",
    "canonical_action",
    "Decision",
    "Equivalence",
    "Gate",
    "Validity",
    "default_extractor",
    "extract_action",
    "normalize_action",
]
