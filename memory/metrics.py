"""Task scores for memory QA: SQuAD-style token F1 (the default), an optional LLM judge, and
the bootstrap confidence interval of a mean score."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from agentkd import llm
from agentkd.errors import InputError
from agentkd.log import CallRecord

_ARTICLES = re.compile(r"\b(a|an|the|and)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation, articles and 'and', squeeze spaces (LoCoMo's normaliser
    without its Porter stemmer, which would need nltk)."""
    text = str(text).lower().replace(",", " ")
    text = text.translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def token_f1(prediction: str, reference: str) -> float:
    """Token-overlap F1 between a predicted and a reference answer, in [0, 1]."""
    pred = normalize_answer(prediction).split()
    ref = normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = Counter(pred) & Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


_JUDGE_PROMPT = (
    "You grade answers to questions about a conversation.\n"
    "Question: {question}\nGold answer: {gold}\nPredicted answer: {pred}\n"
    "Is the predicted answer correct (same meaning as the gold answer)? Reply CORRECT or WRONG."
)


def judge_score(model: str, question: str, prediction: str, reference: str,
                **kwargs: Any) -> tuple[float, CallRecord]:
    """1.0 / 0.0 from an LLM judge (role "judge"); a failed call scores by token F1 instead."""
    result = llm.complete(model, [{"role": "user", "content": _JUDGE_PROMPT.format(
        question=question, gold=reference, pred=prediction)}], role="judge", max_tokens=4,
        temperature=0.0, **kwargs)
    if not result.ok:
        return token_f1(prediction, reference), result.record
    text = str(result.messages()[0].get("content") or "").upper()
    return (1.0 if "CORRECT" in text and "INCORRECT" not in text else 0.0), result.record


def bootstrap_ci(values: Sequence[float], *, resamples: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (seeded, so reruns agree).

    One value gives a zero-width interval at it; no values is an error.
    """
    if not 0.0 < level < 1.0:
        raise InputError(f"confidence level must be in (0, 1), got {level}")
    if resamples < 1:
        raise InputError(f"bootstrap resamples must be >= 1, got {resamples}")
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise InputError("bootstrap interval of no values")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail])
    return float(lo), float(hi)
