"""Choosing llama.cpp's load configuration from a child-process rehearsal (agentkd.llama_probe).

Fast tests drive the chooser with simulated rehearsals and real crashing children; `slow` ones
rehearse the real shipped SmolLM2-135M.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import importable, require

from agentkd import llama_probe as probe
from agentkd import local_models as lm
from agentkd.errors import ConfigError, LocalModelError

NO_LLAMA = "needs llama-cpp-python: pip install 'agentkd[local]'"


pytestmark = pytest.mark.usefixtures("probe_cache")


class Script:
    """A simulated `rehearse`: which settings survive, and a record of what was tried."""

    def __init__(self, survives: dict[bool, bool]) -> None:
        self.survives = survives
        self.tried: list[bool] = []

    def __call__(self, model_file: Path, extra_bufts: bool) -> probe.Rehearsal:
        self.tried.append(extra_bufts)
        if self.survives[extra_bufts]:
            return probe.Rehearsal(extra_bufts, ok=True)
        return probe.Rehearsal(extra_bufts, ok=False, cause="the process was killed by SIGSEGV")


def test_a_crash_with_extra_buffer_types_loads_without_them_and_is_remembered(model_file):
    crashes = Script({True: False, False: True})
    assert probe.choose_extra_bufts("local/tiny", model_file, crashes) is False
    assert crashes.tried == [True, False]

    verdicts = list(probe.probe_dir().glob("tiny.*.json"))
    assert len(verdicts) == 1
    record = json.loads(verdicts[0].read_text())
    assert record["extra_bufts"] is False and record["model"] == "local/tiny"
    assert [r["ok"] for r in record["rehearsals"]] == [False, True]

    never = Script({True: True, False: True})
    assert probe.choose_extra_bufts("local/tiny", model_file, never) is False  # remembered
    assert never.tried == []


def test_a_machine_that_survives_keeps_the_extra_buffer_types_after_one_rehearsal(model_file):
    fine = Script({True: True, False: True})
    assert probe.choose_extra_bufts("local/tiny", model_file, fine) is True
    assert fine.tried == [True]
    assert probe.choose_extra_bufts("local/tiny", model_file, Script({True: False,
                                                                      False: False})) is True


def test_the_verdict_is_per_model_file(model_file, tmp_path):
    assert probe.choose_extra_bufts("local/tiny", model_file, Script({True: False,
                                                                      False: True})) is False
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 10)
    fine = Script({True: True, False: True})
    assert probe.choose_extra_bufts("local/other", other, fine) is True
    assert fine.tried == [True]
    model_file.write_bytes(b"GGUF" + b"\0" * 99)  # a new file of another size: probed anew
    again = Script({True: True, False: True})
    assert probe.choose_extra_bufts("local/tiny", model_file, again) is True
    assert again.tried == [True]


def test_crashing_either_way_is_a_clear_error_and_is_not_remembered(model_file):
    with pytest.raises(LocalModelError) as err:
        probe.choose_extra_bufts("local/tiny", model_file, Script({True: False, False: False}))
    message = str(err.value)
    assert "local/tiny" in message
    assert "killed by SIGSEGV" in message
    assert "-DGGML_NATIVE=OFF" in message and "--force-reinstall" in message
    assert not list(probe.probe_dir().glob("*.json"))  # a fixed install is probed again


@pytest.mark.parametrize(("value", "expected"), [("on", True), ("off", False), ("OFF", False)])
def test_the_environment_forces_a_choice_without_a_probe(model_file, monkeypatch, value,
                                                         expected):
    monkeypatch.setenv(probe.ENV_VAR, value)
    untouched = Script({True: False, False: False})
    assert probe.choose_extra_bufts("local/tiny", model_file, untouched) is expected
    assert untouched.tried == []


def test_a_bad_environment_value_names_the_variable(model_file, monkeypatch):
    monkeypatch.setenv(probe.ENV_VAR, "maybe")
    with pytest.raises(ConfigError, match=r"AGENTKD_LOCAL_EXTRA_BUFTS must be one of auto, "
                                          r"on, off, got 'maybe'"):
        probe.choose_extra_bufts("local/tiny", model_file, Script({True: True, False: True}))


def test_a_child_that_segfaults_is_reported_by_its_signal(model_file, monkeypatch):
    # A real child process dying of SIGSEGV, as llama.cpp's AMX path does.
    monkeypatch.setattr(probe, "_CHILD_CODE", "import ctypes; ctypes.string_at(0)")
    result = probe.rehearse(model_file, True)
    assert result == probe.Rehearsal(True, ok=False, cause="the process was killed by SIGSEGV")


def test_a_child_that_hangs_is_stopped(model_file, monkeypatch):
    monkeypatch.setattr(probe, "_CHILD_CODE", "import time; time.sleep(60)")
    result = probe.rehearse(model_file, False, timeout=1.0)
    assert result == probe.Rehearsal(False, ok=False, cause="no answer within 1 s")


def test_a_file_llama_cpp_cannot_load_fails_the_rehearsal_with_its_message(model_file):
    require(importable("llama_cpp"), NO_LLAMA)
    result = probe.rehearse(model_file, True)
    assert not result.ok
    assert result.cause is not None and result.cause.startswith("exit code 1: ")
    assert "Failed to load model" in result.cause


def test_model_params_turns_the_extra_buffer_types_off_only_inside(monkeypatch):
    require(importable("llama_cpp"), NO_LLAMA)
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    assert bindings.llama_model_default_params().use_extra_bufts is True
    with probe.model_params(False):
        assert bindings.llama_model_default_params().use_extra_bufts is False
        assert llama_cpp.llama_model_default_params().use_extra_bufts is False
    with probe.model_params(True):
        assert bindings.llama_model_default_params().use_extra_bufts is True
    assert bindings.llama_model_default_params().use_extra_bufts is True


def test_the_backend_loads_with_the_chosen_setting(model_file, monkeypatch):
    require(importable("llama_cpp"), NO_LLAMA)
    import llama_cpp
    import llama_cpp.llama_cpp as bindings

    seen: list[bool] = []

    class RecordingLlama:
        def __init__(self, **kwargs: object) -> None:
            # What llama-cpp-python's own __init__ would start from.
            seen.append(bool(bindings.llama_model_default_params().use_extra_bufts))

        def close(self) -> None:
            pass

    monkeypatch.setattr(llama_cpp, "Llama", RecordingLlama)
    monkeypatch.setattr(lm, "_models", {})
    monkeypatch.setattr(lm, "choose_extra_bufts", lambda model, path: False)
    lm.get_llama(f"local/{model_file}")
    assert seen == [False]


def test_an_unloadable_model_is_a_clear_error_not_a_dead_process(model_file, monkeypatch):
    require(importable("llama_cpp"), NO_LLAMA)
    monkeypatch.setattr(lm, "_models", {})
    with pytest.raises(LocalModelError) as err:
        lm.get_llama(f"local/{model_file}")
    message = str(err.value)
    assert f"local/{model_file}" in message and "Failed to load model" in message


@pytest.mark.slow
def test_the_real_probe_rehearses_smollm_and_the_model_then_answers(monkeypatch):
    import litellm

    monkeypatch.setattr(lm, "_models", {})
    path = lm.model_path("local/smollm2-135m")
    chosen = probe.choose_extra_bufts("local/smollm2-135m", path)
    record = json.loads(next(probe.probe_dir().glob("SmolLM2-135M-Instruct.Q4_1.*.json"))
                        .read_text())
    assert record["extra_bufts"] is chosen
    assert record["rehearsals"][-1]["ok"] is True
    response = litellm.completion(model="local/smollm2-135m", max_tokens=4,
                                  messages=[{"role": "user", "content": "Say hello"}])
    assert response.usage.completion_tokens >= 1
    lm.close_all()
