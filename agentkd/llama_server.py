"""`python -m agentkd.llama_server`: llama-cpp-python's OpenAI-compatible server, loaded the
way this machine survives.

``python -m llama_cpp.server`` loads its model with llama.cpp's defaults, so on the AMX CPUs
where ggml's extra buffer types segfault (`agentkd.llama_probe`) it comes up, answers
``/v1/models`` and dies at its first completion. This entry point takes the same arguments,
rehearses the model once per machine like an in-process ``local/`` model, and starts the
server with the verdict. ``--model`` also accepts a known local model (``local/<name>`` or
``<name>``, e.g. ``qwen2.5-coder-1.5b``), resolved to its GGUF file.

    python -m agentkd.llama_server --model local/qwen2.5-coder-1.5b --model_alias qwen --port 8000
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from agentkd.errors import AgentKDError, ConfigError

__all__ = ["main", "resolve_model_argument"]


def resolve_model_argument(argv: Sequence[str]) -> tuple[list[str], Path]:
    """`argv` with its ``--model`` value as a GGUF path, and that path.

    Raises `ConfigError` when there is no ``--model`` (a config file with several models is
    not rehearsed: pass each model to its own server).
    """
    from agentkd.local_models import model_path

    args = list(argv)
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name != "--model":
            continue
        if not eq:
            if i + 1 == len(args):
                break
            value = args[i + 1]
        path = Path(value).expanduser()
        resolved = path.resolve() if path.is_file() else model_path(value)
        if eq:
            args[i] = f"--model={resolved}"
        else:
            args[i + 1] = str(resolved)
        return args, resolved
    raise ConfigError("agentkd.llama_server needs --model: a .gguf file or a known local "
                      "model such as local/qwen2.5-coder-1.5b")


def main(argv: Sequence[str] | None = None) -> None:
    """Rehearse the model (`choose_extra_bufts`), then run ``llama_cpp.server`` with it."""
    from agentkd.llama_probe import choose_extra_bufts, model_params

    try:
        args, model_file = resolve_model_argument(sys.argv[1:] if argv is None else argv)
        extra_bufts = choose_extra_bufts(f"local/{model_file.name}", model_file)
        from llama_cpp.server.__main__ import main as serve
    except AgentKDError as exc:
        sys.exit(f"error: {exc}")
    except ImportError:
        sys.exit("error: the server needs llama-cpp-python's server extra: "
                 "pip install 'llama-cpp-python[server]'")
    sys.argv = [sys.argv[0], *args]  # llama_cpp.server parses sys.argv itself
    # The model is loaded inside `serve`, before uvicorn starts: the whole call is the block.
    with model_params(extra_bufts):
        serve()


if __name__ == "__main__":
    main()
