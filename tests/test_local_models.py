"""The embedded llama.cpp backend: name resolution, part assembly, registration, generation.

Fast tests use fake distributions built in a tmp folder; `slow` ones load the real shipped
SmolLM2-135M and Qwen2.5-Coder-1.5B models (``pytest -m slow``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import litellm
import pytest

from agentkd import local_models as lm
from agentkd.costs import call_cost, price_per_token, register_price
from agentkd.errors import ConfigError
from agentkd.llm import sample

SMOL, QWEN = "local/smollm2-135m", "local/qwen2.5-coder-1.5b"


def _fake_dist(root: Path, dist: str, rel_file: str, data: bytes) -> None:
    """An installed distribution `dist` (dist-info + RECORD) shipping `rel_file` under `root`."""
    package = dist.replace("-", "_")
    target = root / package / rel_file
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "RECORD").write_text(f"{package}/{rel_file},,\n{package}-0.1.dist-info/METADATA,,\n")


@pytest.fixture
def fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[lm.LocalModelSpec, bytes]:
    """A three-part GGUF-looking model, installed as three fake wheels, known as local/fake."""
    site = tmp_path / "site"
    site.mkdir()
    chunks = [b"GGUF" + b"a" * 96, b"b" * 100, b"c" * 37]
    parts = []
    for i, chunk in enumerate(chunks, start=1):
        dist = f"agentkd-fake-part{i}"
        _fake_dist(site, dist, f"data/part{i:02d}.bin", chunk)
        parts.append((dist, f"part{i:02d}.bin"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("AGENTKD_CACHE", str(tmp_path / "cache"))
    spec = lm.LocalModelSpec(name="fake", description="a fake model", parts=tuple(parts),
                             filename="fake-model.gguf", size=sum(map(len, chunks)),
                             input_per_mtok=1.0, output_per_mtok=2.0)
    monkeypatch.setitem(lm.KNOWN_MODELS, "fake", spec)
    return spec, b"".join(chunks)


def test_split_model_is_assembled_once_into_the_cache(fake_model, tmp_path):
    spec, content = fake_model
    path = lm.model_path("local/fake")
    assert path.parent == tmp_path / "cache" / "models"
    assert path.name.startswith("fake-model.") and path.suffix == ".gguf"
    assert path.read_bytes() == content
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    inode = path.stat().st_ino
    assert lm.model_path("fake") == path  # bare name works too
    assert path.stat().st_ino == inode  # reused, not rewritten
    assert not list(path.parent.glob("*.tmp"))


def test_find_parts_keeps_join_order(fake_model):
    spec, _ = fake_model
    assert [p.name for p in lm.find_parts(spec)] == ["part01.bin", "part02.bin", "part03.bin"]


def test_missing_part_names_the_package_and_the_install_command(fake_model, monkeypatch):
    spec, _ = fake_model
    broken = lm.LocalModelSpec(**{**spec.__dict__,
                                  "parts": (*spec.parts, ("agentkd-fake-part9", "part09.bin"))})
    monkeypatch.setitem(lm.KNOWN_MODELS, "fake", broken)
    with pytest.raises(ConfigError) as err:
        lm.model_path("local/fake")
    assert "agentkd-fake-part9" in str(err.value)
    assert "pip install 'agentkd[local]'" in str(err.value)


def test_wrong_total_size_is_refused(fake_model, monkeypatch):
    spec, _ = fake_model
    monkeypatch.setitem(lm.KNOWN_MODELS, "fake",
                        lm.LocalModelSpec(**{**spec.__dict__, "size": 999}))
    with pytest.raises(ConfigError, match="expected 999"):
        lm.model_path("local/fake")


def test_a_join_that_is_not_gguf_leaves_nothing_behind(tmp_path):
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(b"nope")
    parts[1].write_bytes(b"more")
    dest = tmp_path / "out" / "m.gguf"
    with pytest.raises(ConfigError, match="not a GGUF"):
        lm.assemble_parts(parts, dest)
    assert not dest.exists()
    assert [p.name for p in dest.parent.iterdir()] == ["m.gguf.lock"]


def test_a_truncated_cached_file_is_rebuilt(tmp_path):
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(b"GGUF1234")
    parts[1].write_bytes(b"5678")
    dest = tmp_path / "m.gguf"
    dest.write_bytes(b"GGUF12")  # an interrupted copy made by some other tool
    assert lm.assemble_parts(parts, dest).read_bytes() == b"GGUF12345678"


def test_concurrent_assembly_yields_one_whole_file(tmp_path):
    parts = []
    for i in range(4):
        part = tmp_path / f"p{i}"
        part.write_bytes((b"GGUF" if i == 0 else b"") + bytes([65 + i]) * 200_000)
        parts.append(part)
    dest = tmp_path / "cache" / "m.gguf"
    errors: list[BaseException] = []

    def join() -> None:
        try:
            lm.assemble_parts(parts, dest)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=join) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert dest.read_bytes() == b"".join(p.read_bytes() for p in parts)


def test_cache_dir_follows_agentkd_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTKD_CACHE", str(tmp_path))
    assert lm.cache_dir() == tmp_path / "models"
    monkeypatch.delenv("AGENTKD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert lm.cache_dir() == tmp_path / "xdg" / "agentkd" / "models"


def test_unknown_name_lists_known_models_and_how_to_install():
    with pytest.raises(ConfigError) as err:
        lm.model_path("local/gpt-5-local")
    message = str(err.value)
    assert "'gpt-5-local'" in message
    for name in lm.KNOWN_MODELS:
        assert f"local/{name}" in message
    assert "pip install 'agentkd[local]'" in message
    assert ".gguf" in message


def test_unknown_name_through_litellm_keeps_the_message():
    with pytest.raises(Exception, match="local/smollm2-135m"):
        litellm.completion(model="local/no-such-model",
                           messages=[{"role": "user", "content": "hi"}])


def test_absolute_gguf_path_is_accepted_and_checked(tmp_path):
    gguf = tmp_path / "mine.gguf"
    gguf.write_bytes(b"GGUF")
    assert lm.model_path(f"local/{gguf}") == gguf
    with pytest.raises(ConfigError, match="does not exist"):
        lm.model_path(f"local/{tmp_path / 'absent.gguf'}")
    with pytest.raises(ConfigError, match="unknown local model"):
        lm.model_path("local/relative/mine.gguf")


def test_bad_context_length_env_is_a_config_error(monkeypatch):
    monkeypatch.setenv("AGENTKD_LOCAL_N_CTX", "lots")
    with pytest.raises(ConfigError, match="AGENTKD_LOCAL_N_CTX"):
        lm._n_ctx()
    monkeypatch.setenv("AGENTKD_LOCAL_N_CTX", "8192")
    assert lm._n_ctx() == 8192
    monkeypatch.delenv("AGENTKD_LOCAL_N_CTX")
    assert lm._n_ctx() == lm.DEFAULT_N_CTX


@pytest.fixture
def provider_map():
    saved = list(litellm.custom_provider_map)
    yield
    litellm.custom_provider_map = saved


def test_register_is_idempotent_and_keeps_other_providers(provider_map):
    other = {"provider": "someone-else", "custom_handler": object()}
    litellm.custom_provider_map = [*litellm.custom_provider_map, other]
    lm.register()
    lm.register()
    providers = [entry["provider"] for entry in litellm.custom_provider_map]
    assert providers.count("local") == 1
    assert other in litellm.custom_provider_map
    assert "scripted" in providers  # conftest's provider survives
    handler = next(e["custom_handler"] for e in litellm.custom_provider_map
                   if e["provider"] == "local")
    assert isinstance(handler, lm.LocalLLM)


def test_register_replaces_a_stale_local_entry(provider_map):
    litellm.custom_provider_map = [
        *[e for e in litellm.custom_provider_map if e["provider"] != "local"],
        {"provider": "local", "custom_handler": object()},
    ]
    lm.register()
    local = [e for e in litellm.custom_provider_map if e["provider"] == "local"]
    assert len(local) == 1 and isinstance(local[0]["custom_handler"], lm.LocalLLM)


def test_shipped_models_are_priced_and_user_prices_win():
    assert call_cost(QWEN, 1_000_000, 1_000_000) == pytest.approx(0.15)
    assert call_cost(SMOL, 1_000_000, 1_000_000) == pytest.approx(0.03)
    try:
        register_price(SMOL, 7.0, 8.0)
        lm.register()
        assert price_per_token(SMOL) == pytest.approx((7e-6, 8e-6))
    finally:
        register_price(SMOL, 0.01, 0.02)


def test_importing_agentkd_does_not_import_llama_cpp():
    code = ("import sys, agentkd, litellm; "
            "assert 'llama_cpp' not in sys.modules, 'llama_cpp imported'; "
            "assert any(p['provider'] == 'local' for p in litellm.custom_provider_map)")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_close_all_never_frees_a_model_that_is_generating(monkeypatch):
    class FakeLlama:
        closed = 0

        def close(self) -> None:
            FakeLlama.closed += 1

    busy = lm._Loaded(FakeLlama(), Path("busy.gguf"))  # type: ignore[arg-type]
    idle = lm._Loaded(FakeLlama(), Path("idle.gguf"))  # type: ignore[arg-type]
    monkeypatch.setattr(lm, "_models", {"busy": busy, "idle": idle})
    with busy.lock:  # as if another thread were sampling
        lm.close_all(timeout=0.05)
    assert FakeLlama.closed == 1
    assert lm._models == {}


def test_streaming_is_refused_clearly():
    with pytest.raises(Exception, match="do not stream"):
        lm.LocalLLM().completion(SMOL, [], optional_params={"stream": True})


# --- real models ---------------------------------------------------------------------------

QUESTION = [
    {"role": "system", "content": "You are a careful assistant. Answer briefly."},
    {"role": "user", "content": "List three primary colours, comma separated."},
]


def _timings(response: Any) -> list[dict[str, Any]]:
    return response._hidden_params["local_timings"]


def _assert_kv_cache_reused(response: Any) -> None:
    timings = _timings(response)
    prompt = response.usage.prompt_tokens
    # Sample 1 evaluates the prompt (less any prefix an earlier request left in the KV cache,
    # e.g. the same system prompt in a previous test); later ones find all of it cached and
    # evaluate at most the one token llama.cpp replays to refresh the logits.
    assert timings[0]["prompt_eval_tokens"] >= 1
    for later in timings[1:]:
        assert later["prompt_tokens"] == prompt
        assert later["prompt_eval_tokens"] <= 1
        assert later["eval_tokens"] <= later["completion_tokens"] + 1


@pytest.mark.slow
def test_smollm_n3_returns_three_choices_with_usage_and_kv_reuse():
    response = litellm.completion(model=SMOL, messages=QUESTION, n=3, temperature=0.7,
                                  max_tokens=24)
    assert len(response.choices) == 3
    assert [c.index for c in response.choices] == [0, 1, 2]
    assert all(c.message.content for c in response.choices)
    assert all(c.finish_reason in ("stop", "length") for c in response.choices)
    timings = _timings(response)
    assert response.usage.prompt_tokens == timings[0]["prompt_tokens"] > 10  # counted once
    assert response.usage.completion_tokens == sum(t["completion_tokens"] for t in timings)
    assert response.usage.total_tokens == (response.usage.prompt_tokens
                                            + response.usage.completion_tokens)
    _assert_kv_cache_reused(response)


@pytest.mark.slow
def test_smollm_seed_reproduces_and_samples_differ():
    kwargs: dict[str, Any] = dict(model=SMOL, messages=QUESTION, n=3, temperature=1.0,
                                  max_tokens=16, seed=1234)
    first = [c.message.content for c in litellm.completion(**kwargs).choices]
    again = [c.message.content for c in litellm.completion(**kwargs).choices]
    assert first == again
    assert len(set(first)) > 1  # one seed per sample, not the same seed three times


@pytest.mark.slow
def test_smollm_stop_and_max_tokens():
    response = litellm.completion(model=SMOL, messages=QUESTION, max_tokens=5, stop=[","])
    choice = response.choices[0]
    assert "," not in choice.message.content
    assert response.usage.completion_tokens <= 5


@pytest.mark.slow
def test_smollm_acompletion_and_concurrent_threads():
    async def run() -> Any:
        return await litellm.acompletion(model=SMOL, messages=QUESTION, n=2, max_tokens=8)

    assert len(asyncio.run(run()).choices) == 2
    results: list[Any] = []

    def call() -> None:
        results.append(litellm.completion(model=SMOL, messages=QUESTION, max_tokens=8))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(r.choices[0].message.content for r in results)


@pytest.mark.slow
def test_smollm_prompt_over_context_is_a_context_window_error():
    # Sized from the context the backend is configured with, so it stays over when that grows.
    long = [{"role": "user", "content": "word " * (lm._n_ctx() + 2000)}]
    with pytest.raises(litellm.ContextWindowExceededError):
        litellm.completion(model=SMOL, messages=long, max_tokens=16)


@pytest.mark.slow
def test_agentkd_sample_uses_one_request_for_n():
    samples, _, calls = sample(SMOL, QUESTION, n=3, temperature=0.1, max_tokens=8)
    assert len(samples) == 3 and len(calls) == 1
    assert calls[0].record.cost_usd > 0
    assert calls[0].record.prompt_tokens > 0


@pytest.mark.slow
def test_qwen_n3_answers_and_reuses_the_prompt():
    messages = [{"role": "user", "content": "What is 17 + 25? Reply with the number only."}]
    response = litellm.completion(model=QWEN, messages=messages, n=3, temperature=0.1,
                                  max_tokens=8, stop=["\n"])
    assert len(response.choices) == 3
    assert all("42" in c.message.content for c in response.choices)
    assert response.usage.completion_tokens == sum(t["completion_tokens"]
                                                  for t in _timings(response))
    _assert_kv_cache_reused(response)
    assert call_cost(QWEN, response.usage.prompt_tokens, response.usage.completion_tokens) > 0


@pytest.mark.slow
def test_loaded_models_close_at_exit_without_a_traceback():
    code = ("import agentkd, litellm; "
            "r = litellm.completion(model='local/smollm2-135m', max_tokens=4, "
            "messages=[{'role': 'user', 'content': 'hi'}]); print(len(r.choices))")
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("1")
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
