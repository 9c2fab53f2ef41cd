"""Shared fixtures: a scripted litellm custom provider and a fresh SQLite log per test; and
`require`, the one way a test skips for a missing dependency (it fails under CI=true)."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm
import pytest
from litellm import CustomLLM
from litellm.types.utils import Choices, Message, ModelResponse, Usage

import agentkd

Script = Callable[[list[dict[str, Any]], int], list[str]]


def require(condition: object, why: str) -> None:
    """Skip the calling test, fixture or module unless `condition` holds; under CI=true fail.

    Locally a missing browser, data folder or optional extra only narrows the run. In CI it
    means the job's setup is broken, and skipping would report the suite that needs it as
    passed; `why` names what is missing and how to get it.
    """
    if condition:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why} (CI=true: a missing dependency fails the run)", pytrace=False)
    pytest.skip(why, allow_module_level=True)


def importable(module: str) -> bool:
    """Whether `module` imports (for `require`; an extra's package may be missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def serve_llama(model: str, alias: str, *, n_ctx: int = 4096,
                 env: dict[str, str] | None = None) -> Iterator[str]:
    """`python -m agentkd.llama_server` serving `model` as `alias` on a free loopback port, one
    llama.cpp thread; yields its OpenAI-compatible base URL once ``/models`` answers."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "agentkd.llama_server", "--model", model, "--model_alias", alias,
         "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1", "--n_ctx", str(n_ctx)],
        env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/models", timeout=1)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"agentkd.llama_server exited with {server.returncode}")
                time.sleep(0.5)
        else:
            pytest.fail("agentkd.llama_server did not come up within 60 s")
        yield base
    finally:
        server.terminate()
        server.wait(10)


@pytest.fixture
def probe_cache(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """llama.cpp load verdicts (agentkd.llama_probe) in this test's own cache, none forced."""
    from agentkd.llama_probe import ENV_VAR

    monkeypatch.setenv("AGENTKD_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_VAR, raising=False)


@pytest.fixture
def model_file(tmp_path: Any) -> Any:
    """A file named like a GGUF model that llama.cpp cannot load."""
    path = tmp_path / "tiny.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 60)
    return path


class ScriptedLLM(CustomLLM):
    """A litellm custom provider (`scripted/<name>`) whose answers come from a test's script.

    It honours ``n`` and counts tokens as whitespace words, so costs are predictable.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scripts: dict[str, Script] = {}
        self.received: list[tuple[str, list[dict[str, Any]], dict[str, Any]]] = []
        self.lock = threading.Lock()

    def completion(self, model: str, messages: list[dict[str, Any]], *args: Any,
                   **kwargs: Any) -> ModelResponse:
        params = kwargs.get("optional_params") or {}
        n = int(params.get("n") or 1)
        with self.lock:
            self.received.append((f"scripted/{model}", messages, dict(params)))
        texts = self.scripts[f"scripted/{model}"](messages, n)
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages)
        return ModelResponse(
            model=model,
            choices=[Choices(index=i, finish_reason="stop",
                             message=Message(role="assistant", content=t))
                     for i, t in enumerate(texts)],
            usage=Usage(prompt_tokens=prompt, completion_tokens=sum(len(t.split()) for t in texts),
                        total_tokens=0),
        )

    async def acompletion(self, *args: Any, **kwargs: Any) -> ModelResponse:
        return self.completion(*args, **kwargs)


_scripted = ScriptedLLM()
litellm.custom_provider_map = [
    *[p for p in litellm.custom_provider_map if p["provider"] != "scripted"],
    {"provider": "scripted", "custom_handler": _scripted},
]
# Round prices make expected costs easy to compute by hand.
agentkd.register_price("scripted/teacher", 10.0, 20.0)
agentkd.register_price("scripted/student", 1.0, 2.0)


@contextlib.contextmanager
def postgres_schema(prefix: str) -> Iterator[str]:
    """A log URL on a fresh schema of the test PostgreSQL server (AGENTKD_TEST_POSTGRES_URL),
    dropped afterwards, so a test shares no tables with any other."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    url = os.environ.get("AGENTKD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("AGENTKD_TEST_POSTGRES_URL is not set: scripts/test.sh starts PostgreSQL "
                    "and sets it")
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield make_url(url).update_query_dict(
            {"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The bench command's console as a terminal, so a progress bar would really be drawn."""
    from rich.console import Console

    from agentkd.envs import cli as bench_cli

    screen = io.StringIO()
    monkeypatch.setattr(bench_cli, "console", Console(file=screen, force_terminal=True,
                                                      color_system=None, width=400))
    return screen


@pytest.fixture
def scripted() -> ScriptedLLM:
    _scripted.scripts.clear()
    _scripted.received.clear()
    return _scripted


@pytest.fixture
def log_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path / 'log.db'}"


def grown_distill_run(scripted: ScriptedLLM, log_url: str, demos: Any, run: str,
                      tasks: Sequence[tuple[str, str | None]]) -> agentkd.Distiller:
    """A distill run `run` with `grow_demos` over the scripted provider, one two-step episode
    per (task id, task type), all won. The student splits on every observation until the
    store holds a demo, then agrees: the teacher-call rate goes 1.0, 0.0, 0.0, ..."""

    def student(messages: list[dict[str, Any]], n: int) -> list[str]:
        if "Expert examples" in str(messages):
            return ["Action: go to desk 1"] * n
        return ["Action: go to desk 1", "Action: look", "Action: inventory"][:n]

    scripted.scripts["scripted/student"] = student
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: go to desk 1"] * n
    kd = agentkd.Distiller(teacher="scripted/teacher", student="scripted/student",
                           mode="distill", log=log_url, demos=demos, grow_demos=True, run=run,
                           cascade={"sampling": "n"})
    for task, task_type in tasks:
        messages = [{"role": "user", "content": f"Your task is to: reach desk {task}"}]
        with kd.episode_scope(task_id=task, goal=f"reach desk {task}",
                              task_type=task_type) as ep:
            for observation in ("You see a desk 1.", "You see a drawer 1."):
                messages = [*messages, {"role": "user", "content": observation}]
                kd.completion(messages=messages)
            ep.finish(success=True)
    return kd
