"""`python -m agentkd.llama_server`: llama_cpp.server started with this machine's rehearsed
load configuration (agentkd.llama_probe). Fast tests stand in for the server's `main`; the
`slow` one starts the real server with the extra buffer types off, the AMX crash's fix."""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import importable, require, serve_llama

from agentkd import llama_probe as probe
from agentkd import llama_server
from agentkd.errors import ConfigError
from agentkd.local_models import model_path

NO_LLAMA = "needs llama-cpp-python: pip install 'agentkd[local]'"


pytestmark = pytest.mark.usefixtures("probe_cache")


def test_a_known_local_model_is_resolved_to_its_file(model_file):
    args, path = llama_server.resolve_model_argument(
        ["--model", "local/smollm2-135m", "--port", "8000"])
    assert path == model_path("smollm2-135m") and path.suffix == ".gguf"
    assert args == ["--model", str(path), "--port", "8000"]

    args, path = llama_server.resolve_model_argument([f"--model={model_file}", "--n_ctx", "64"])
    assert path == model_file.resolve() and args == [f"--model={model_file}", "--n_ctx", "64"]


@pytest.mark.parametrize("argv, wanted", [
    (["--port", "8000"], "needs --model"),
    (["--model"], "needs --model"),
    (["--model", "no-such-model"], "no-such-model"),
])
def test_a_missing_or_unknown_model_is_named(argv, wanted):
    with pytest.raises(ConfigError, match=wanted):
        llama_server.resolve_model_argument(argv)


def test_bad_arguments_exit_with_the_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_:
        llama_server.main(["--model", "no-such-model"])
    assert str(exit_.value).startswith("error: ") and "no-such-model" in str(exit_.value)


@pytest.mark.parametrize("verdict", [False, True])
def test_the_server_loads_its_model_with_the_rehearsed_setting(model_file, monkeypatch,
                                                               verdict):
    require(importable("llama_cpp.server.__main__"), NO_LLAMA)
    import llama_cpp.llama_cpp as bindings
    import llama_cpp.server.__main__ as server_main

    rehearsed: list[Path] = []
    seen: dict[str, object] = {}

    def choose(model: str, path: Path) -> bool:
        rehearsed.append(path)
        return verdict

    def serve() -> None:  # where llama_cpp.server builds its Llama
        seen["extra_bufts"] = bool(bindings.llama_model_default_params().use_extra_bufts)
        seen["argv"] = sys.argv[1:]

    monkeypatch.setattr(probe, "choose_extra_bufts", choose)
    monkeypatch.setattr(server_main, "main", serve)
    monkeypatch.setattr(sys, "argv", ["agentkd.llama_server"])
    llama_server.main(["--model", str(model_file), "--port", "0"])
    assert rehearsed == [model_file.resolve()]
    assert seen == {"extra_bufts": verdict, "argv": ["--model", str(model_file.resolve()),
                                                     "--port", "0"]}
    assert bindings.llama_model_default_params().use_extra_bufts is True  # restored after


@pytest.mark.slow
def test_the_real_server_answers_with_the_extra_buffer_types_off():
    """What an AMX machine that crashes gets (forced here with the environment): the server
    loads without ggml's extra buffer types and completes a chat."""
    require(importable("llama_cpp.server"), NO_LLAMA)
    with serve_llama("local/smollm2-135m", "smollm2", n_ctx=512,
                      env={probe.ENV_VAR: "off"}) as base:
        body = json.dumps({"model": "smollm2", "max_tokens": 8, "messages": [
            {"role": "user", "content": "Say hello. " * 10}]}).encode()
        request = urllib.request.Request(f"{base}/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.load(response)
        assert answer["choices"][0]["message"]["content"]
        assert answer["usage"]["prompt_tokens"] > 10
