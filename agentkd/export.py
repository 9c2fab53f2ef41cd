"""Exporting the SQL log as a supervised fine-tuning dataset (agent distillation).

This module owns the road from logged steps to chat records on disk: rebuilding the prompt
each step saw (steps store only the turns new since the previous step), the filters
(successful episodes, the source of each action, task types, duplicates), the train /
validation split by episode, the three file formats and the dataset card beside the file.

A record is a conversation the agent really sent: the system prompt as the agent used it,
observations as user (or tool) turns, the teacher's thought + action as assistant turns. Each
assistant turn carries a weight: 1 when it is the logged answer of a step that passes the
filters (train on it), 0 when it is context only. Two granularities:

- ``episode``: the fewest step prompts whose history covers every step of the episode. An
  agent that appends to its history gives one record per episode; one that keeps a window
  of the last turns (the ReAct agent keeps 12) gives one record per window. Every step is
  trained exactly once, and the context it is trained in is the one the agent showed.
- ``step``: one record per step, the exact prompt and its answer (only the answer weighted).

Answers are the logged ones, or with ``answers="teacher"`` the teacher's: a step the student
acted on is trained with the label the teacher gave it in shadow mode (`Cascade.shadow`), so
the states the student itself reached are trained with the teacher's actions (DAgger, Ross et
al. 2011). Such a record is one step's prompt, since the history holds the student's actions.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator
from sqlalchemy import select

from agentkd.cascades.actions import extract_action, is_tool_calls
from agentkd.episode import messages_hash
from agentkd.errors import InputError
from agentkd.log import Episode, Run, Step, TrajectoryLog
from agentkd.retrieval.keys import message_text
from agentkd.secrets import scrub

Format = Literal["openai-jsonl", "hf-chat", "sharegpt"]
Source = Literal["teacher", "student", "both"]
Granularity = Literal["episode", "step"]
Answers = Literal["logged", "teacher"]
FORMATS: tuple[str, ...] = ("openai-jsonl", "hf-chat", "sharegpt")
CARD_VERSION = 1


class Turn(BaseModel):
    """One chat message of a record, in OpenAI's shape plus a training weight."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    weight: int | None = Field(default=None, ge=0, le=1,
                               description="assistant turns only: 1 = train on it")


class Record(BaseModel):
    """One training conversation and where it came from in the log."""

    id: str = Field(description="<run id>/<episode id>/<step idx>: the step whose prompt "
                                "and answer the record is")
    run_id: str
    episode_id: int
    task_id: str
    task_type: str | None = None
    step_ids: list[int] = Field(description="log row ids of the steps of the weighted turns")
    messages: list[Turn]


class ExportFilters(BaseModel):
    """Which log rows become training data."""

    success_only: bool = True
    source: Source = Field(default="both", description="teacher: steps the teacher served; "
                           "student: student steps the cascade gate accepted; both")
    task_types: list[str] | None = None
    dedupe: bool = True
    granularity: Granularity = "episode"
    answers: Answers = Field(default="logged", description="logged: each step's own answer; "
                             "teacher: the teacher's, on its own steps and on the student "
                             "steps it labelled in shadow mode (DAgger); needs granularity "
                             "'step'")
    val_fraction: float = Field(default=0.1, ge=0.0, le=1.0)
    seed: int = 0

    @model_validator(mode="after")
    def _teacher_answers_per_step(self) -> ExportFilters:
        if self.answers == "teacher" and self.granularity != "step":
            raise ValueError("answers='teacher' trains each labelled step in its own prompt "
                             "(the history holds the student's actions, not the teacher's): "
                             "set granularity='step' (--granularity step)")
        return self


class SplitInfo(BaseModel):
    path: str
    records: int
    episodes: int
    trained_turns: int
    sha256: str
    ids: list[str]


class TokenStats(BaseModel):
    tokenizer: str
    total: int
    per_record_min: int
    per_record_mean: float
    per_record_max: int
    trained: int = Field(description="tokens in weighted assistant turns")


class DatasetCard(BaseModel):
    """Written beside the dataset as `<file stem>.card.json`."""

    card_version: int = CARD_VERSION
    format: Format
    source_log: str
    runs: list[str]
    filters: ExportFilters
    episodes_seen: int
    episodes_kept: int
    steps_trained: int
    steps_by_source: dict[str, int]
    task_types: dict[str, int]
    duplicates_dropped: int
    splits: dict[str, SplitInfo]
    tokens: TokenStats
    dataset_sha256: str


def card_path(data_file: str | Path) -> Path:
    path = Path(data_file)
    return path.with_name(f"{path.stem}.card.json")


def validation_path(data_file: str | Path) -> Path:
    path = Path(data_file)
    return path.with_name(f"{path.stem}.val{path.suffix}")


# ---- rebuilding what each step saw ------------------------------------------------------


def step_prompts(steps: list[Step]) -> list[list[dict[str, Any]]]:
    """The full messages each step was called with, rebuilt from the logged new turns.

    A step logs only the turns new since the previous one, or all of them when the agent
    rewrote its history; the stored hash of the full prompt says which.
    """
    prompts: list[list[dict[str, Any]]] = []
    previous: list[dict[str, Any]] = []
    for step in steps:
        new = list(step.new_messages or [])
        appended = previous + new
        if previous and messages_hash(appended) == step.prompt_hash:
            full = appended
        elif messages_hash(new) == step.prompt_hash or not previous:
            full = new
        else:
            raise InputError(
                f"step {step.idx} of episode {step.episode_id} cannot be rebuilt: neither its "
                f"logged turns nor those appended to the previous prompt match its prompt hash "
                f"(the log was edited, or written by an incompatible agentkd)")
        prompts.append(full)
        previous = full
    return prompts


def _turn(message: dict[str, Any]) -> Turn:
    role = message.get("role")
    if role in ("developer", "function"):  # OpenAI's newer/older names for the same roles
        role = "system" if role == "developer" else "tool"
    if role not in ("system", "user", "assistant", "tool"):
        raise InputError(f"a logged message has role {role!r}, which no export format holds")
    tool_calls = message.get("tool_calls") or None
    return Turn(role=role, content=scrub(message_text(message)) if message.get("content")
                is not None else None,
                tool_calls=[_tool_call_dict(c) for c in tool_calls] if tool_calls else None,
                tool_call_id=message.get("tool_call_id"), name=message.get("name"))


def _tool_call_dict(call: Any) -> dict[str, Any]:
    data = call if isinstance(call, dict) else dict(call)
    fn = data.get("function") or {}
    fn = fn if isinstance(fn, dict) else dict(fn)
    args = fn.get("arguments")
    return {"id": data.get("id"), "type": "function",
            "function": {"name": fn.get("name"),
                         "arguments": scrub(args if isinstance(args, str) else json.dumps(args))}}


def answer_turn(step: Step) -> Turn:
    """The step's final answer: its text, and its tool calls rebuilt from the logged action
    (the log keeps them as the canonical name + arguments JSON the gate compared)."""
    return _assistant_turn(step, step.final_text, step.final_action)


def teacher_answer_turn(step: Step) -> Turn:
    """The teacher's answer to the step: its own on a teacher step, else its shadow label."""
    if step.actor == "teacher":
        return answer_turn(step)
    return _assistant_turn(step, step.teacher_text, step.teacher_action)


def has_teacher_answer(step: Step) -> bool:
    """A teacher step, or a student step whose shadow label kept the teacher's answer (text,
    or tool calls in the canonical action; logs before `teacher_text` keep only the action)."""
    return step.actor == "teacher" or (step.teacher_action is not None and (
        step.teacher_text is not None or is_tool_calls(step.teacher_action)))


def _assistant_turn(step: Step, text: str | None, action: str | None) -> Turn:
    tool_calls = None
    if action and is_tool_calls(action):
        calls = json.loads(action)
        tool_calls = [{"id": f"call_{step.id}_{i}", "type": "function",
                       "function": {"name": c["name"],
                                    "arguments": scrub(json.dumps(c["arguments"]))}}
                      for i, c in enumerate(calls)]
    if text is None and tool_calls is None:
        raise InputError(f"step {step.idx} of episode {step.episode_id} has no answer in the log")
    return Turn(role="assistant", content=scrub(text) if text is not None else None,
                tool_calls=tool_calls)


def _same_answer(turn: Turn, step: Step) -> bool:
    """Whether an assistant turn of a later prompt is this step's logged answer."""
    if turn.tool_calls:
        message = {"content": turn.content, "tool_calls": turn.tool_calls}
        return extract_action(message) == step.final_action
    return (turn.content or "").strip() == scrub(step.final_text or "").strip()


def step_source(step: Step) -> str | None:
    """'teacher', 'student' (the gate accepted it) or None (an ungated student answer)."""
    if step.actor == "teacher":
        return "teacher"
    return "student" if step.verdict == "student" else None


def _trained(step: Step, filters: ExportFilters) -> bool:
    """Whether the step's answer is trained under `filters` (its source, its label)."""
    source = step_source(step)
    if filters.answers == "teacher":
        # A labelled student step is trained whether or not the gate accepted it.
        source = source or "student"
        if not has_teacher_answer(step):
            return False
    return source is not None and filters.source in ("both", source)


def trained_source(step: Step, filters: ExportFilters) -> str:
    """What a trained step counts as in the card's `steps_by_source`."""
    if filters.answers == "teacher" and step.actor != "teacher":
        return "teacher_label"
    return step_source(step) or "unknown"


# ---- records ----------------------------------------------------------------------------


def episode_records(episode: Episode, steps: list[Step], filters: ExportFilters
                    ) -> list[Record]:
    """The records of one episode from its logged steps (see the module docstring), oldest
    window first."""
    if not steps:
        return []
    prompts = step_prompts(steps)
    wanted = {s.id for s in steps if _trained(s, filters)}
    answer = teacher_answer_turn if filters.answers == "teacher" else answer_turn
    trained: set[int] = set()
    records: list[Record] = []
    last = len(steps) - 1
    while last >= 0:
        covered, record = _window(episode, steps, prompts, last, wanted, trained,
                                  history=filters.granularity == "episode", answer=answer)
        if record is not None:
            records.append(record)
        last = covered - 1
    return records[::-1]


def _window(episode: Episode, steps: list[Step], prompts: list[list[dict[str, Any]]], at: int,
            wanted: set[int], trained: set[int], *, history: bool,
            answer: Callable[[Step], Turn]) -> tuple[int, Record | None]:
    """The record of step `at`: its prompt and `answer(step)`. With `history`, the assistant
    turns of the prompt that are verified answers of earlier steps are weighted too. Returns
    (index of the earliest step the record covers, record or None when it trains nothing)."""
    if steps[at].id not in wanted and not history:
        return at, None  # a step record trains only its own answer
    turns = [_turn(m) for m in prompts[at]] + [answer(steps[at])]
    step_of: dict[int, Step] = {len(turns) - 1: steps[at]}
    earliest = at
    if history:
        # The k-th assistant turn from the end of the prompt is step at-k's answer when the
        # agent kept its history in order; a turn that does not match is context only.
        positions = [i for i, t in enumerate(turns[:-1]) if t.role == "assistant"]
        for k, pos in enumerate(reversed(positions), start=1):
            if at - k < 0 or not _same_answer(turns[pos], steps[at - k]):
                break
            step_of[pos] = steps[at - k]
            earliest = at - k
    weighted: list[int] = []
    for i, turn in enumerate(turns):
        if turn.role != "assistant":
            continue
        step = step_of.get(i)
        train = step is not None and step.id in wanted and step.id not in trained
        turn.weight = int(train)
        if train and step is not None:
            trained.add(step.id)
            weighted.append(step.id)
    if not weighted:
        return earliest, None
    return earliest, Record(id=f"{episode.run_id}/{episode.id}/{steps[at].idx}",
                            run_id=episode.run_id, episode_id=episode.id,
                            task_id=episode.task_id, task_type=episode.task_type,
                            step_ids=sorted(weighted), messages=turns)


# ---- formats ----------------------------------------------------------------------------


def to_format(record: Record, fmt: Format) -> dict[str, Any]:
    """One line of the dataset file in `fmt`."""
    if fmt == "openai-jsonl":
        # OpenAI's chat fine-tuning shape: `weight` (0/1) on assistant turns, nothing else.
        return {"messages": [t.model_dump(exclude_none=True) for t in record.messages]}
    if fmt == "hf-chat":
        # transformers chat templates want tool-call arguments as a dict, content as text.
        messages = []
        for t in record.messages:
            m = t.model_dump(exclude_none=True)
            m["content"] = t.content or ""
            if t.tool_calls:
                m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": json.loads(
                    c["function"]["arguments"] or "{}")}} for c in t.tool_calls]
            messages.append(m)
        return {"messages": messages}
    if fmt == "sharegpt":
        # LLaMA-Factory's sharegpt: system apart, tool calls as function_call turns and tool
        # results as observation turns. It has no per-turn weights: every gpt turn trains.
        system = "\n\n".join(t.content or "" for t in record.messages if t.role == "system")
        conversations = []
        for t in record.messages:
            if t.role == "system":
                continue
            if t.role == "assistant" and t.tool_calls:
                value = json.dumps([{"name": c["function"]["name"],
                                     "arguments": json.loads(c["function"]["arguments"] or "{}")}
                                    for c in t.tool_calls])
                conversations.append({"from": "function_call", "value": value})
            else:
                who = {"user": "human", "assistant": "gpt", "tool": "observation"}[t.role]
                conversations.append({"from": who, "value": t.content or ""})
        return {"conversations": conversations, "system": system}
    raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def from_format(line: dict[str, Any], fmt: Format) -> list[Turn]:
    """Turns of one dataset line in `fmt` (the inverse of `to_format`)."""
    if fmt == "sharegpt":
        turns = [Turn(role="system", content=line["system"])] if line.get("system") else []
        roles = {"human": "user", "gpt": "assistant", "observation": "tool"}
        for i, c in enumerate(line["conversations"]):
            if c["from"] == "function_call":
                calls = json.loads(c["value"])
                turns.append(Turn(role="assistant", weight=1, tool_calls=[
                    {"id": f"call_{i}_{k}", "type": "function",
                     "function": {"name": x["name"], "arguments": json.dumps(x["arguments"])}}
                    for k, x in enumerate(calls)]))
            else:
                role = roles[c["from"]]
                turns.append(Turn(role=role, content=c["value"],  # type: ignore[arg-type]
                                  weight=1 if role == "assistant" else None))
        return turns
    turns = []
    for m in line["messages"]:
        m = dict(m)
        if m.get("tool_calls"):
            m["tool_calls"] = [{**c, "function": {**c["function"], "arguments": (
                c["function"]["arguments"] if isinstance(c["function"]["arguments"], str)
                else json.dumps(c["function"]["arguments"]))}} for c in m["tool_calls"]]
        if m.get("role") == "assistant" and m.get("weight") is None:
            m["weight"] = 1  # a plain chat file: every assistant turn trains
        turns.append(Turn(**m))
    return turns


def detect_format(line: dict[str, Any]) -> Format:
    if "conversations" in line:
        return "sharegpt"
    messages = line.get("messages")
    if isinstance(messages, list):
        has_dict_args = any(isinstance(c.get("function", {}).get("arguments"), dict)
                            for m in messages if isinstance(m, dict)
                            for c in m.get("tool_calls") or [] if isinstance(c, dict))
        return "hf-chat" if has_dict_args else "openai-jsonl"
    raise InputError("a dataset line has neither 'messages' (openai-jsonl / hf-chat) nor "
                     "'conversations' (sharegpt); export one with `agentkd export`")


def read_dataset(path: str | Path) -> list[list[Turn]]:
    """The conversations of a dataset file in any of the three formats, validated.

    Raises InputError naming the file and line when it is missing, empty or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"dataset {path} does not exist; write one with `agentkd export`")
    conversations: list[list[Turn]] = []
    with path.open(encoding="utf-8") as handle:
        for n, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if not isinstance(line, dict):
                    raise InputError(f"expected a JSON object, got {type(line).__name__}")
                turns = from_format(line, detect_format(line))
            except (json.JSONDecodeError, KeyError, TypeError, ValidationError,
                    InputError) as exc:
                detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(
                    f"{path}:{n} is not a chat record ({type(exc).__name__}: {detail}); each "
                    f"line must be one JSON record in openai-jsonl, hf-chat or sharegpt format "
                    f"as written by `agentkd export`") from None
            if not any(t.role == "assistant" and t.weight for t in turns):
                raise InputError(f"{path}:{n} has no assistant turn to train on")
            conversations.append(turns)
    if not conversations:
        raise InputError(f"dataset {path} holds no records; export some with `agentkd export` "
                         f"(check its filters: only successful episodes are kept by default)")
    return conversations


# ---- the export -------------------------------------------------------------------------


def _episodes(log: TrajectoryLog, run_ids: list[str], filters: ExportFilters
              ) -> tuple[int, list[Episode]]:
    with log.session() as s:
        known = set(s.scalars(select(Run.id).where(Run.id.in_(run_ids))))
        missing = [r for r in run_ids if r not in known]
        if missing:
            runs = ", ".join(sorted(s.scalars(select(Run.id)))[:10]) or "none"
            raise InputError(f"run(s) {', '.join(missing)} not in the log; runs there: {runs}")
        episodes = list(s.scalars(select(Episode).where(Episode.run_id.in_(run_ids))
                                  .order_by(Episode.id)))
    kept = [e for e in episodes
            if (not filters.success_only or e.success is True)
            and (filters.task_types is None or e.task_type in filters.task_types)]
    return len(episodes), kept


def split_episodes(episode_ids: list[int], fraction: float, seed: int
                   ) -> tuple[set[int], set[int]]:
    """(train, validation) episode ids: a seeded shuffle, at least one of each side when
    there are two or more episodes and the fraction is strictly between 0 and 1."""
    ids = sorted(episode_ids)
    random.Random(seed).shuffle(ids)
    n_val = round(len(ids) * fraction)
    if 0 < fraction < 1 and len(ids) >= 2:
        n_val = min(max(n_val, 1), len(ids) - 1)
    return set(ids[n_val:]), set(ids[:n_val])


TokenCounter = Callable[[list[dict[str, Any]]], int]


def default_token_counter() -> tuple[str, TokenCounter]:
    import litellm

    # A GPT-4o tokenizer ships with litellm (offline); student tokenizers differ by ~10%.
    return "gpt-4o", lambda messages: int(litellm.token_counter(model="gpt-4o",
                                                                messages=messages))


def export_dataset(log: str | TrajectoryLog, run: str | Iterable[str], out: str | Path, *,
                   fmt: Format = "openai-jsonl", filters: ExportFilters | None = None,
                   token_counter: tuple[str, TokenCounter] | None = None,
                   on_episode: Callable[[], None] | None = None) -> DatasetCard:
    """Write the training (and validation) records of `run` to `out` and its dataset card.

    The validation split, when the fraction is above 0, goes to `<stem>.val<suffix>` and the
    card to `<stem>.card.json` beside `out`. Returns the card.
    """
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    filters = filters or ExportFilters()
    log = log if isinstance(log, TrajectoryLog) else TrajectoryLog(log)
    run_ids = [run] if isinstance(run, str) else list(run)
    if not run_ids:
        raise InputError("name at least one run to export (--run ID)")
    seen, episodes = _episodes(log, run_ids, filters)
    if not episodes:
        raise InputError(f"no episode of run(s) {', '.join(run_ids)} passes the filters "
                         f"({seen} episodes; success_only={filters.success_only}, "
                         f"task_types={filters.task_types}): nothing to export")
    train_ids, val_ids = split_episodes([e.id for e in episodes], filters.val_fraction,
                                        filters.seed)
    tokenizer, count = token_counter or default_token_counter()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    targets = {"train": (out, train_ids), "validation": (validation_path(out), val_ids)}
    buckets: dict[str, list[Record]] = {"train": [], "validation": []}
    seen_hashes: set[str] = set()
    duplicates = 0
    by_source: Counter[str] = Counter()
    by_type: Counter[str] = Counter()
    for episode in episodes:
        steps = log.steps(episode.id)
        source_of = {s.id: trained_source(s, filters) for s in steps}
        records = episode_records(episode, steps, filters)
        split = "train" if episode.id in train_ids else "validation"
        for record in records:
            digest = hashlib.sha256(json.dumps([t.model_dump() for t in record.messages],
                                               sort_keys=True).encode()).hexdigest()
            if filters.dedupe and digest in seen_hashes:
                duplicates += 1
                continue
            seen_hashes.add(digest)
            buckets[split].append(record)
            by_type[episode.task_type or "unknown"] += 1
            for step_id in record.step_ids:
                by_source[source_of[step_id]] += 1
        if on_episode:
            on_episode()
    if not buckets["train"] and not buckets["validation"] and filters.answers == "teacher":
        raise InputError(f"the {len(episodes)} episodes that pass the filters hold no step "
                         f"with a teacher answer (source {filters.source!r}): label the "
                         f"student's steps with Cascade(shadow=1.0) (`--shadow 1.0`)")
    if not buckets["train"] and not buckets["validation"]:
        raise InputError(f"the {len(episodes)} episodes that pass the filters hold no step "
                         f"from source {filters.source!r}: nothing to export")
    splits: dict[str, SplitInfo] = {}
    lengths: list[int] = []
    trained_tokens = 0
    for name, (path, ids) in targets.items():
        records = buckets[name]
        if name == "validation" and not ids:
            path.unlink(missing_ok=True)  # a stale split from an earlier export would mislead
            continue
        file_hash = hashlib.sha256()
        with path.open("w", encoding="utf-8") as handle:
            for record in records:
                line = json.dumps(to_format(record, fmt), ensure_ascii=False) + "\n"
                file_hash.update(line.encode())
                handle.write(line)
                plain = [t.model_dump(exclude_none=True, exclude={"weight"})
                         for t in record.messages]
                lengths.append(count(plain))
                trained_tokens += sum(count([p]) for p, t in zip(plain, record.messages,
                                                                 strict=True) if t.weight)
        splits[name] = SplitInfo(
            path=path.name, records=len(records), episodes=len(ids),
            trained_turns=sum(len(r.step_ids) for r in records), sha256=file_hash.hexdigest(),
            ids=[r.id for r in records])
    card = DatasetCard(
        format=fmt, source_log=scrub(log.engine.url.render_as_string(hide_password=True)),
        runs=run_ids, filters=filters, episodes_seen=seen, episodes_kept=len(episodes),
        steps_trained=sum(by_source.values()), steps_by_source=dict(by_source),
        task_types=dict(sorted(by_type.items())), duplicates_dropped=duplicates,
        splits=splits,
        tokens=TokenStats(tokenizer=tokenizer, total=sum(lengths),
                          per_record_min=min(lengths, default=0),
                          per_record_mean=round(sum(lengths) / max(len(lengths), 1), 1),
                          per_record_max=max(lengths, default=0), trained=trained_tokens),
        dataset_sha256=hashlib.sha256("".join(s.sha256 for s in splits.values())
                                      .encode()).hexdigest(),
    )
    card_path(out).write_text(card.model_dump_json(indent=2), encoding="utf-8")
    return card


def load_card(data_file: str | Path) -> DatasetCard | None:
    """The card beside `data_file`, or None when there is none."""
    path = card_path(data_file)
    if not path.is_file():
        return None
    try:
        return DatasetCard.model_validate_json(path.read_text(encoding="utf-8"))
    except ValidationError as exc:
        raise InputError(f"{path} is not an agentkd dataset card: "
                         f"{str(exc).splitlines()[0]}; re-export the dataset") from None


def iter_targets(turns: list[Turn]) -> Iterator[tuple[list[Turn], Turn]]:
    """(context, weighted assistant turn) pairs of one conversation: what next-action
    evaluation asks a model to reproduce."""
    for i, turn in enumerate(turns):
        if turn.role == "assistant" and turn.weight:
            yield turns[:i], turn
