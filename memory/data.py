"""Memory QA data: LoCoMo, LongMemEval and HotpotQA loaders, and the fixed evaluation subsets.

Every dataset becomes `Sample`s: a memory (a list of `Turn`s grouped in sessions) and the
questions asked over it. A missing or malformed file raises `InputError` naming the file and
what was expected, never a bare KeyError from deep inside.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentkd.errors import InputError

DEFAULT_LOCOMO = (Path(__file__).resolve().parents[2] / "shared" / "data" / "locomo"
                  / "locomo10.json")
LOCOMO_TRAIN = tuple(range(0, 8))
LOCOMO_TEST = (8, 9)
LOCOMO_CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop",
                     5: "adversarial"}


@dataclass(frozen=True)
class Turn:
    """One utterance (or document sentence) of a memory."""

    speaker: str
    text: str
    session: int = 0
    date: str = ""
    ref: str = ""


@dataclass(frozen=True)
class QAItem:
    qid: str
    question: str
    answer: str
    category: str = ""
    evidence: tuple[str, ...] = ()


@dataclass
class Sample:
    """A memory and the questions asked over it."""

    sample_id: str
    turns: list[Turn]
    questions: list[QAItem] = field(default_factory=list)


def _read_json(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} file not found: {p}. Pass the path to the published JSON file.")
    try:
        with p.open(encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{what} file {p} is not valid JSON: {exc}") from None


def _malformed(path: str | Path, what: str, detail: str) -> InputError:
    return InputError(f"{what} file {path} is malformed: {detail}")


def load_locomo(path: str | Path = DEFAULT_LOCOMO, *, conversations: tuple[int, ...] | None = None,
                drop_categories: tuple[int, ...] = (5,)) -> list[Sample]:
    """LoCoMo (locomo10.json): one Sample per conversation; category 5 dropped by default.

    Image turns keep their caption ("[shares a photo of ...]") since questions ask about them.
    """
    data = _read_json(path, "LoCoMo")
    if not isinstance(data, list):
        raise _malformed(path, "LoCoMo", "expected a JSON list of conversations")
    wanted = range(len(data)) if conversations is None else conversations
    samples = []
    for idx in wanted:
        if not 0 <= idx < len(data):
            raise InputError(f"LoCoMo conversation index {idx} out of range 0..{len(data) - 1}")
        entry = data[idx]
        try:
            conv = entry["conversation"]
            qa = entry["qa"]
        except (KeyError, TypeError):
            raise _malformed(path, "LoCoMo", f"entry {idx} lacks 'conversation' or 'qa'") from None
        turns: list[Turn] = []
        n = 1
        while f"session_{n}" in conv:
            date = str(conv.get(f"session_{n}_date_time", ""))
            for t in conv[f"session_{n}"] or []:
                text = str(t.get("text", ""))
                if t.get("blip_caption"):
                    text = f"{text} [shares a photo of {t['blip_caption']}]"
                turns.append(Turn(speaker=str(t.get("speaker", "")), text=text, session=n,
                                  date=date, ref=str(t.get("dia_id", ""))))
            n += 1
        if not turns:
            raise _malformed(path, "LoCoMo", f"conversation {idx} has no session turns")
        questions = []
        for j, q in enumerate(qa):
            category = int(q.get("category", 0))
            if category in drop_categories or "answer" not in q:
                continue
            questions.append(QAItem(qid=f"locomo{idx}-q{j}", question=str(q["question"]),
                                    answer=str(q["answer"]), category=str(category),
                                    evidence=tuple(str(e) for e in q.get("evidence", []))))
        samples.append(Sample(sample_id=f"locomo{idx}", turns=turns, questions=questions))
    return samples


def load_longmemeval(path: str | Path) -> list[Sample]:
    """LongMemEval (longmemeval_{s,m,oracle}.json): a Sample per question, haystack as memory."""
    data = _read_json(path, "LongMemEval")
    if not isinstance(data, list):
        raise _malformed(path, "LongMemEval", "expected a JSON list of questions")
    samples = []
    for i, entry in enumerate(data):
        try:
            qid = str(entry["question_id"])
            sessions = entry["haystack_sessions"]
            dates = entry.get("haystack_dates") or [""] * len(sessions)
            question, answer = str(entry["question"]), str(entry["answer"])
        except (KeyError, TypeError):
            raise _malformed(path, "LongMemEval", f"entry {i} lacks question_id / question / "
                             "answer / haystack_sessions") from None
        turns = [Turn(speaker=str(t.get("role", "")), text=str(t.get("content", "")),
                      session=s + 1, date=str(dates[s]) if s < len(dates) else "")
                 for s, session in enumerate(sessions) for t in session]
        samples.append(Sample(sample_id=f"lme-{qid}", turns=turns, questions=[
            QAItem(qid=qid, question=question, answer=answer,
                   category=str(entry.get("question_type", "")))]))
    return samples


def load_hotpotqa(path: str | Path) -> list[Sample]:
    """HotpotQA (hotpot_dev_distractor_v1.json style): each question's paragraphs as its memory."""
    data = _read_json(path, "HotpotQA")
    if not isinstance(data, list):
        raise _malformed(path, "HotpotQA", "expected a JSON list of questions")
    samples = []
    for i, entry in enumerate(data):
        try:
            qid = str(entry["_id"])
            context = entry["context"]
            question, answer = str(entry["question"]), str(entry["answer"])
        except (KeyError, TypeError):
            raise _malformed(path, "HotpotQA", f"entry {i} lacks _id / question / answer / "
                             "context") from None
        turns: list[Turn] = []
        for p, para in enumerate(context):
            if not (isinstance(para, list) and len(para) == 2):
                raise _malformed(path, "HotpotQA", f"entry {i} context[{p}] is not [title, "
                                 "sentences]")
            title, sentences = para
            turns.extend(Turn(speaker=str(title), text=str(s).strip(), session=p + 1,
                              ref=f"{title}:{k}") for k, s in enumerate(sentences))
        samples.append(Sample(sample_id=f"hotpot-{qid}", turns=turns, questions=[
            QAItem(qid=qid, question=question, answer=answer,
                   category=str(entry.get("type", "")))]))
    return samples


def load_dataset(name: str, path: str | Path | None = None, *,
                 split: str = "train") -> list[Sample]:
    """`name` in locomo | longmemeval | hotpotqa; LoCoMo's split picks conversations 0–7 or 8–9."""
    if name == "locomo":
        if split not in ("train", "test", "all"):
            raise InputError(f"LoCoMo split must be train, test or all, got {split!r}")
        convs = {"train": LOCOMO_TRAIN, "test": LOCOMO_TEST, "all": None}[split]
        return load_locomo(path or DEFAULT_LOCOMO, conversations=convs)
    if path is None:
        raise InputError(f"dataset {name!r} needs --data-path to its published JSON file")
    if name == "longmemeval":
        return load_longmemeval(path)
    if name == "hotpotqa":
        return load_hotpotqa(path)
    raise InputError(f"unknown dataset {name!r}; choose locomo, longmemeval or hotpotqa")


def round_robin(sample: Sample, position: int, limit: int | None) -> list[QAItem]:
    """Up to `limit` questions of `sample` (None: all), taken round-robin over its categories.

    Within each category questions keep file order; categories are visited in sorted order,
    starting at `position` (mod the number of categories). A category that runs out is
    skipped, so the first `limit` questions are always a prefix of the first `limit + 1`.
    """
    by_cat: dict[str, list[QAItem]] = defaultdict(list)
    for q in sample.questions:
        by_cat[q.category].append(q)
    queues = [by_cat[c] for c in sorted(by_cat)]
    start = position % len(queues) if queues else 0
    queues = queues[start:] + queues[:start]
    picked: list[QAItem] = []
    depth = 0
    wanted = len(sample.questions) if limit is None else limit
    while len(picked) < wanted and any(depth < len(qs) for qs in queues):
        for qs in queues:
            if depth < len(qs) and len(picked) < wanted:
                picked.append(qs[depth])
        depth += 1
    return picked


def select_questions(samples: list[Sample], per_sample: int | None) -> list[tuple[Sample, QAItem]]:
    """A fixed, documented subset: per sample, `per_sample` questions round-robin over categories.

    Sample i starts at its i-th category (see `round_robin`), so that small subsets still mix
    categories: per_sample=1 on LoCoMo's 8 training conversations takes the first multi-hop,
    temporal, open-domain, single-hop, multi-hop, ... question of conversations 0, 1, 2, 3,
    4, ...; per_sample=4 takes one question of each category per conversation. None keeps
    every question (in file order).
    """
    if per_sample is None:
        return [(sample, q) for sample in samples for q in sample.questions]
    return [(sample, q) for position, sample in enumerate(samples)
            for q in round_robin(sample, position, per_sample)]


def select_total(samples: list[Sample], total: int) -> list[tuple[Sample, QAItem]]:
    """`total` questions spread evenly over the samples, each sample's round-robin over categories.

    Sample i gets total // len(samples) questions, one more while the remainder lasts; a sample
    with fewer questions hands its shortfall to the next ones. A larger `total` selects a
    superset of a smaller one, so an evaluation can grow in stages and reuse its finished rows.
    Asking for more questions than the samples hold is an `InputError`.
    """
    available = sum(len(s.questions) for s in samples)
    if total < 1:
        raise InputError(f"the number of questions must be >= 1, got {total}")
    if total > available:
        raise InputError(f"asked for {total} questions, the data holds {available}")
    quota = [0] * len(samples)
    left = total
    while left:
        open_ = [i for i, s in enumerate(samples) if quota[i] < len(s.questions)]
        share, extra = divmod(left, len(open_))
        for rank, i in enumerate(open_):
            give = min(share + (rank < extra), len(samples[i].questions) - quota[i])
            quota[i] += give
            left -= give
    return [(sample, q) for position, sample in enumerate(samples)
            for q in round_robin(sample, position, quota[position])]
