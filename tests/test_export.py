"""`agentkd export`: logged episodes → chat fine-tuning records, filters, card, bad input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import litellm
import pytest
from typer.testing import CliRunner

import agentkd
from agentkd.cli import app
from agentkd.errors import InputError
from agentkd.export import (
    ExportFilters,
    card_path,
    export_dataset,
    read_dataset,
    step_prompts,
    validation_path,
)

TEACHER, STUDENT = "scripted/teacher", "scripted/student"
SYSTEM = "You act in a text world. Answer 'Thought: ...' then 'Action: ...'."


def appending_agent(goal: str, steps: int) -> None:
    """Keeps its whole history: each step's prompt extends the previous one."""
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"Your task is to: {goal}"}]
    for i in range(steps):
        text = litellm.completion(model=TEACHER, messages=messages).choices[0].message.content
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"Observation: you see drawer {i + 2}."}]


def windowed_agent(goal: str, steps: int, history: int) -> None:
    """Like the ReAct agent: keeps only the last `history` exchanges, and only the newest
    observation lists the admissible commands, so every prompt is rewritten."""
    exchanges: list[tuple[str, str]] = []
    for i in range(steps):
        messages = [{"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"Your task is to: {goal}"}]
        for text, obs in exchanges[-history:]:
            messages += [{"role": "assistant", "content": text},
                         {"role": "user", "content": f"Observation: {obs}"}]
        messages[-1] = {"role": "user", "content": messages[-1]["content"]
                        + f"\nAdmissible commands: go to drawer {i + 1}, look"}
        text = litellm.completion(model=TEACHER, messages=messages).choices[0].message.content
        exchanges.append((text.strip(), f"you see drawer {i + 2}"))


def teacher_script(messages: list[dict[str, Any]], n: int) -> list[str]:
    # The answer depends on the latest observation, so every step's answer differs.
    latest = messages[-1]["content"].splitlines()[0]
    return [f"Thought: step {len(messages)}.\nAction: answer {latest}"] * n


def collect(log_url: str, run: str, episodes: list[tuple[str, str, bool, int]],
            agent: str = "appending") -> agentkd.Distiller:
    kd = agentkd.Distiller(teacher=TEACHER, mode="collect", log=log_url, run=run)
    for task_id, task_type, success, steps in episodes:
        with kd.episode_scope(task_id=task_id, goal=f"goal {task_id}",
                              task_type=task_type) as scope:
            if agent == "appending":
                appending_agent(f"goal {task_id}", steps)
            else:
                windowed_agent(f"goal {task_id}", steps, history=2)
            scope.finish(success=success)
    return kd


@pytest.fixture
def teacher_log(scripted, log_url) -> str:
    scripted.scripts[TEACHER] = teacher_script
    collect(log_url, "collect", [("t1", "pick", True, 3), ("t2", "heat", True, 4),
                                 ("t3", "pick", False, 2), ("t4", "clean", True, 2)])
    return log_url


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def plain(messages: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(m["role"], m.get("content") or "") for m in messages]


def test_every_exported_turn_traces_back_to_a_log_row(teacher_log, tmp_path):
    out = tmp_path / "data.jsonl"
    card = export_dataset(teacher_log, "collect", out,
                          filters=ExportFilters(val_fraction=0.0, granularity="step"))
    log = agentkd.TrajectoryLog(teacher_log)
    records = lines(out)
    assert len(records) == card.splits["train"].records == 3 + 4 + 2  # t3 failed
    for record_id, record in zip(card.splits["train"].ids, records, strict=True):
        run_id, episode_id, idx = record_id.split("/")
        steps = log.steps(int(episode_id))
        prompt = step_prompts(steps)[int(idx)]
        # The context is the prompt the agent sent at that step, turn for turn …
        assert plain(record["messages"][:-1]) == plain(prompt)
        # … and the trained turn is the answer the log holds for it.
        answer = record["messages"][-1]
        assert (answer["role"], answer["weight"]) == ("assistant", 1)
        assert answer["content"] == steps[int(idx)].final_text
        assert run_id == "collect"
    assert card.steps_trained == 9 and card.steps_by_source == {"teacher": 9}


def test_episode_records_train_each_step_once_in_the_agents_own_context(teacher_log, tmp_path):
    out = tmp_path / "data.jsonl"
    card = export_dataset(teacher_log, "collect", out, filters=ExportFilters(val_fraction=0))
    records = lines(out)
    # An appending agent's last prompt holds the whole episode: one record per episode.
    assert len(records) == 3
    log = agentkd.TrajectoryLog(teacher_log)
    for record_id, record in zip(card.splits["train"].ids, records, strict=True):
        episode_id = int(record_id.split("/")[1])
        steps = log.steps(episode_id)
        answers = [m["content"] for m in record["messages"] if m["role"] == "assistant"]
        assert answers == [s.final_text for s in steps]
        assert all(m["weight"] == 1 for m in record["messages"] if m["role"] == "assistant")
        assert record["messages"][0] == {"role": "system", "content": SYSTEM}


def test_windowed_agent_gives_windows_that_cover_every_step_exactly_once(scripted, log_url,
                                                                         tmp_path):
    scripted.scripts[TEACHER] = teacher_script
    collect(log_url, "react", [("w1", "pick", True, 7)], agent="windowed")
    out = tmp_path / "w.jsonl"
    card = export_dataset(log_url, "react", out, filters=ExportFilters(val_fraction=0))
    log = agentkd.TrajectoryLog(log_url)
    (episode,) = log.episodes("react")
    steps = log.steps(episode.id)
    # Each prompt is rewritten, so every step logged its whole prompt.
    assert all(s.new_messages[0]["role"] == "system" for s in steps)
    trained = [sid for rid in card.splits["train"].ids
               for sid in _record_step_ids(log, rid, lines(out))]
    assert sorted(trained) == sorted(s.id for s in steps)
    # history=2: a prompt shows 2 earlier answers, so 7 steps need windows of 3 → 3 records.
    assert card.splits["train"].records == 3
    for record in lines(out):
        last_user = [m for m in record["messages"] if m["role"] == "user"][-1]
        assert "Admissible commands" in last_user["content"]


def _record_step_ids(log: agentkd.TrajectoryLog, record_id: str,
                     records: list[dict[str, Any]]) -> list[int]:
    _, episode_id, idx = record_id.split("/")
    steps = {s.final_text: s.id for s in log.steps(int(episode_id))}
    record = next(r for r in records
                  if r["messages"][-1]["content"] == log.steps(int(episode_id))[int(idx)]
                  .final_text)
    return [steps[m["content"]] for m in record["messages"]
            if m["role"] == "assistant" and m["weight"] == 1]


def test_filters_success_task_type_and_split_by_episode(teacher_log, tmp_path):
    out = tmp_path / "d.jsonl"
    card = export_dataset(teacher_log, "collect", out, filters=ExportFilters(
        success_only=False, val_fraction=0.5, granularity="step", seed=3))
    assert card.episodes_kept == 4 and card.splits["train"].episodes == 2
    assert card.splits["validation"].episodes == 2
    episodes = {split: {rid.split("/")[1] for rid in info.ids}
                for split, info in card.splits.items()}
    assert not episodes["train"] & episodes["validation"]
    assert len(lines(validation_path(out))) == card.splits["validation"].records
    assert card.steps_trained == 11  # the failed episode's 2 steps are in

    card = export_dataset(teacher_log, "collect", out, filters=ExportFilters(
        task_types=["pick"], val_fraction=0.0))
    assert card.task_types == {"pick": 1} and card.episodes_kept == 1
    assert not validation_path(out).exists()  # a stale split is removed


def test_source_filter_picks_teacher_or_gate_accepted_student_steps(scripted, log_url,
                                                                    tmp_path):
    from agentkd.retrieval import DemoStore

    def student(messages: list[dict[str, Any]], n: int) -> list[str]:
        if len(messages) == 2:  # agrees with itself on the first step only
            return ["Action: look"] * n
        return ["Action: look", "Action: open drawer 1", "Action: look"][:n]

    scripted.scripts[TEACHER] = teacher_script
    scripted.scripts[STUDENT] = student
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           run="distill", cascade={"sampling": "n"},
                           demos=DemoStore.open(tmp_path / "demos", create=True))
    with kd.episode_scope(task_id="d1", task_type="pick") as scope:
        appending_agent("goal d1", 3)
        scope.finish(success=True)
    steps = kd.log.steps(kd.log.episodes("distill")[0].id)
    assert [s.actor for s in steps] == ["student", "teacher", "teacher"]

    by_source = {}
    for source in ("teacher", "student", "both"):
        out = tmp_path / f"{source}.jsonl"
        card = export_dataset(log_url, "distill", out, filters=ExportFilters(
            source=source, val_fraction=0))  # type: ignore[arg-type]
        (record,) = lines(out)
        by_source[source] = [m["weight"] for m in record["messages"] if m["role"] == "assistant"]
        assert card.steps_by_source == {k: v for k, v in
                                        {"teacher": by_source[source][1:].count(1),
                                         "student": by_source[source][0]}.items() if v}
    # Student steps stay in the conversation as context (weight 0) when not trained on.
    assert by_source == {"teacher": [0, 1, 1], "student": [1, 0, 0], "both": [1, 1, 1]}


def test_teacher_answers_train_the_states_the_student_reached_with_the_teachers_labels(
        scripted, log_url, tmp_path):
    """DAgger data: the student acts (and fails), the teacher labels every step in shadow
    mode; each labelled step becomes its own prompt answered with the teacher's text."""
    scripted.scripts[TEACHER] = teacher_script
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           run="dagger", cascade={"sampling": "n", "shadow": 1.0})
    with kd.episode_scope(task_id="d1", task_type="pick") as scope:
        appending_agent("goal d1", 3)
        scope.finish(success=False)
    steps = kd.log.steps(kd.log.episodes("dagger")[0].id)
    assert [s.actor for s in steps] == ["student"] * 3
    seen = ("Your task is to: goal d1", "Observation: you see drawer 2.",
            "Observation: you see drawer 3.")
    assert [s.teacher_text for s in steps] == [f"Thought: step {n}.\nAction: answer {obs}"
                                               for n, obs in zip((2, 4, 6), seen, strict=True)]
    out = tmp_path / "labels.jsonl"
    card = export_dataset(log_url, "dagger", out, filters=ExportFilters(
        success_only=False, granularity="step", answers="teacher", val_fraction=0))
    records = lines(out)
    assert card.steps_by_source == {"teacher_label": 3} and len(records) == 3
    for record, step in zip(records, steps, strict=True):
        *context, answer = record["messages"]
        assert (answer["content"], answer["weight"]) == (step.teacher_text, 1)
        # The history is what the student did: its own answers, context only.
        assert [(m["content"], m["weight"]) for m in context if m["role"] == "assistant"] == [
            ("Action: look", 0)] * (step.idx)
    # The logged answers of the same run are the student's.
    logged = export_dataset(log_url, "dagger", tmp_path / "logged.jsonl", filters=ExportFilters(
        success_only=False, granularity="step", val_fraction=0))
    assert logged.steps_by_source == {"student": 3}
    assert {lines(tmp_path / "logged.jsonl")[0]["messages"][-1]["content"]} == {"Action: look"}


def test_teacher_answers_need_step_records_and_labels(scripted, log_url, tmp_path):
    with pytest.raises(ValueError, match="set granularity='step'"):
        ExportFilters(answers="teacher")
    result = CliRunner().invoke(app, ["export", "--log", log_url, "--run", "x", "--out",
                                      str(tmp_path / "x.jsonl"), "--answers", "teacher"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--granularity step" in " ".join(result.output.split())
    # A student run without shadow labels holds no teacher answer to train on.
    scripted.scripts[TEACHER] = teacher_script
    scripted.scripts[STUDENT] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                           run="unlabelled", cascade={"sampling": "n"})
    with kd.episode_scope(task_id="d1") as scope:
        appending_agent("goal d1", 2)
        scope.finish(success=True)
    with pytest.raises(InputError, match=r"no step with a teacher answer .*shadow=1\.0"):
        export_dataset(log_url, "unlabelled", tmp_path / "x.jsonl", filters=ExportFilters(
            granularity="step", answers="teacher", val_fraction=0))


def test_dedupe_drops_identical_records_from_two_runs(scripted, log_url, tmp_path):
    scripted.scripts[TEACHER] = teacher_script
    collect(log_url, "a", [("t1", "pick", True, 2)])
    collect(log_url, "b", [("t1", "pick", True, 2)])
    out = tmp_path / "d.jsonl"
    card = export_dataset(log_url, ["a", "b"], out, filters=ExportFilters(val_fraction=0))
    assert (card.splits["train"].records, card.duplicates_dropped) == (1, 1)
    card = export_dataset(log_url, ["a", "b"], out, filters=ExportFilters(
        val_fraction=0, dedupe=False))
    assert (card.splits["train"].records, card.duplicates_dropped) == (2, 0)


@pytest.mark.parametrize("fmt", ["openai-jsonl", "hf-chat", "sharegpt"])
def test_formats_read_back_to_the_same_conversation(teacher_log, tmp_path, fmt):
    out = tmp_path / f"{fmt}.jsonl"
    card = export_dataset(teacher_log, "collect", out, fmt=fmt,
                          filters=ExportFilters(val_fraction=0))
    reference = export_dataset(teacher_log, "collect", tmp_path / "ref.jsonl",
                               filters=ExportFilters(val_fraction=0))
    read, expected = read_dataset(out), read_dataset(tmp_path / "ref.jsonl")
    assert [[(t.role, t.content) for t in c] for c in read] == \
        [[(t.role, t.content) for t in c] for c in expected]
    saved = json.loads(card_path(out).read_text())
    assert saved["format"] == fmt and saved["runs"] == ["collect"]
    assert saved["splits"]["train"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert reference.splits["train"].ids == card.splits["train"].ids
    assert card.tokens.total > card.tokens.trained > 0
    assert card.tokens.per_record_min <= card.tokens.per_record_mean <= card.tokens.per_record_max


def test_tool_calls_are_exported_as_tool_call_records(log_url, tmp_path):
    calls = [{"id": "call_1", "type": "function",
              "function": {"name": "open", "arguments": '{"target": "drawer 1"}'}}]
    kd = agentkd.Distiller(teacher="openai/gpt-4o-mini", mode="collect", log=log_url, run="tools")
    with kd.episode_scope(task_id="tc") as scope:
        messages: list[dict[str, Any]] = [{"role": "user", "content": "open the drawer"}]
        reply = litellm.completion(model="openai/gpt-4o-mini", messages=messages,
                                   mock_tool_calls=calls)
        messages += [reply.choices[0].message.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": "call_1", "content": "opened"}]
        litellm.completion(model="openai/gpt-4o-mini", messages=messages,
                           mock_response="Action: done")
        scope.finish(success=True)
    for fmt, key in (("openai-jsonl", "messages"), ("hf-chat", "messages"),
                     ("sharegpt", "conversations")):
        out = tmp_path / f"{fmt}.jsonl"
        export_dataset(log_url, "tools", out, fmt=fmt,  # type: ignore[arg-type]
                       filters=ExportFilters(val_fraction=0))
        (record,) = lines(out)
        turns = record[key]
        if fmt == "sharegpt":
            assert [t["from"] for t in turns] == ["human", "function_call", "observation", "gpt"]
            assert json.loads(turns[1]["value"]) == [{"name": "open",
                                                      "arguments": {"target": "drawer 1"}}]
            continue
        call = turns[1]["tool_calls"][0]
        assert (call["id"], call["function"]["name"]) == ("call_1", "open")
        arguments = call["function"]["arguments"]
        assert (json.loads(arguments) if fmt == "openai-jsonl" else arguments) == \
            {"target": "drawer 1"}
        assert turns[2] == {"role": "tool", "tool_call_id": "call_1", "content": "opened"}


def test_api_keys_never_reach_the_exported_data(scripted, log_url, tmp_path, monkeypatch):
    secret = "sk-live-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    scripted.scripts[TEACHER] = lambda messages, n: [f"Action: say {secret}"] * n
    kd = agentkd.Distiller(teacher=TEACHER, mode="collect", log=log_url, run="s")
    with kd.episode_scope(task_id="s1") as scope:
        litellm.completion(model=TEACHER, messages=[
            {"role": "user", "content": f"the key is {secret}"}])
        scope.finish(success=True)
    out = tmp_path / "s.jsonl"
    export_dataset(log_url, "s", out, filters=ExportFilters(val_fraction=0))
    text = out.read_text() + card_path(out).read_text()
    assert secret not in text and "[REDACTED]" in text


def test_bad_input_gives_clear_errors(teacher_log, tmp_path):
    with pytest.raises(InputError, match="not in the log; runs there: collect"):
        export_dataset(teacher_log, "nope", tmp_path / "x.jsonl")
    with pytest.raises(InputError, match="no episode .* passes the filters"):
        export_dataset(teacher_log, "collect", tmp_path / "x.jsonl",
                       filters=ExportFilters(task_types=["slice"]))
    with pytest.raises(InputError, match="unknown format 'csv'"):
        export_dataset(teacher_log, "collect", tmp_path / "x.jsonl", fmt="csv")  # type: ignore[arg-type]

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(InputError, match="holds no records"):
        read_dataset(empty)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"prompt": "hi", "completion": "there"}\n')
    with pytest.raises(InputError, match=r"wrong.jsonl:1 is not a chat record"):
        read_dataset(wrong)
    bad_role = tmp_path / "role.jsonl"
    bad_role.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(InputError, match=r"role.jsonl:1 is not a chat record"):
        read_dataset(bad_role)
    no_answer = tmp_path / "q.jsonl"
    no_answer.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    with pytest.raises(InputError, match="no assistant turn to train on"):
        read_dataset(no_answer)
    with pytest.raises(InputError, match="does not exist"):
        read_dataset(tmp_path / "missing.jsonl")


def test_cli_export_writes_the_file_and_card_and_rejects_bad_options(teacher_log, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli.jsonl"
    result = runner.invoke(app, ["export", "--log", teacher_log, "--run", "collect",
                                 "--out", str(out), "--format", "hf-chat",
                                 "--val-fraction", "0.34"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and card_path(out).is_file() and validation_path(out).is_file()
    result = runner.invoke(app, ["export", "--log", teacher_log, "--run", "collect",
                                 "--out", str(out), "--source", "robots"])
    assert result.exit_code == 2 and "source" in result.output


def test_first_thought_prefix_seeds_the_teachers_first_step_only(scripted, log_url, tmp_path):
    def teacher(messages: list[dict[str, Any]], n: int) -> list[str]:
        last = messages[-1]["content"]
        if "Think step by step" in last:
            return ["Thought: the mug is likely in a cabinet.\nThen heat it.\n\nMore."] * n
        if "Begin your reply with this first thought" in last:
            return ["Thought: the mug is likely in a cabinet. Go there.\nAction: go to "
                    "cabinet 1"] * n
        return teacher_script(messages, n)

    scripted.scripts[TEACHER] = teacher
    with pytest.raises(InputError, match="first_thought seeds the teacher"):
        agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="student", log=log_url,
                          first_thought=True)
    kd = agentkd.Distiller(teacher=TEACHER, mode="collect", log=log_url, run="ft",
                           first_thought=True)
    for task in ("f1", "f2"):
        with kd.episode_scope(task_id=task) as scope:
            appending_agent(f"heat a mug ({task})", 2)
            scope.finish(success=True)
    requests = [r[1][-1]["content"] for r in scripted.received]
    # Per episode: the plain chain-of-thought, the seeded first step, an ordinary second step.
    assert [("Think step by step" in r, "Begin your reply" in r) for r in requests] == \
        [(True, False), (False, True), (False, False)] * 2
    assert requests[1].endswith("Thought: the mug is likely in a cabinet. Then heat it.")
    episode = kd.log.episodes("ft")[0]
    assert [c.role for c in kd.log.calls(episode.id)] == ["collect", "collect", "collect"]
    # The log, hence the dataset, keeps the agent's own prompt with the seeded answer.
    out = tmp_path / "ft.jsonl"
    export_dataset(log_url, "ft", out, filters=ExportFilters(val_fraction=0))
    record = lines(out)[0]["messages"]
    assert record[1]["content"] == "Your task is to: heat a mug (f1)"
    assert record[2]["content"].startswith("Thought: the mug is likely in a cabinet.")
