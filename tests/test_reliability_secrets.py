"""Planted secrets never reach any artifact of a run.

Keys are planted in environment variables, `api_key=` kwargs, `extra_headers` / `headers`, a
credentialed `api_base`, and — through the fault server's ``echo_auth`` fault, which echoes the
request's Authorization and x-* headers — in provider error messages on both the student and
the teacher side. Then every artifact is searched for each secret and every 12-character piece
of it: the SQLite file, its WAL and shared-memory files, the demo store files, `agentkd report
--json` and `--html`, exception texts and tracebacks, everything printed, the dashboard's pages
and CSV exports, and (marked `postgres`) the rows of a PostgreSQL log.

Keys also reach the content: an agent's observation echoing `env`, answers quoting it, the
goal, a demo's texts. They are scrubbed where the log and the demo store are written, and
every byte of every file a run, `agentkd demos build` and `agentkd export` write is searched.
"""

from __future__ import annotations

import base64
import os
import secrets as pysecrets
import traceback
from collections.abc import Callable
from pathlib import Path

import litellm
import pytest
from conftest import importable, require
from faultserver import FaultServer
from reliability_support import (
    STUDENT,
    TEACHER,
    check_log,
    files_under,
    grep_secrets,
    register_prices,
)
from typer.testing import CliRunner

import agentkd
import agentkd.cli
from agentkd.retrieval import DemoEpisode, DemoStep, DemoStore, StepKey
from agentkd.secrets import register_secret

TEACHER_NAME, STUDENT_NAME = TEACHER.split("/", 1)[1], STUDENT.split("/", 1)[1]


def plant() -> dict[str, str]:
    h = lambda: pysecrets.token_hex(16)  # noqa: E731
    planted = {
        "env_openai": f"sk-envplant{h()}",           # OPENAI_API_KEY
        "env_token": f"tok{h()}",                    # MY_SERVICE_TOKEN (no well-known shape)
        "teacher_key": f"sk-teacherkw{h()}",         # api_key= of the teacher
        "student_key": f"studentkw{h()}",            # api_key= of the student, no sk- shape
        "header_key": f"hdr{h()}",                   # extra_headers X-Api-Key
        "bearer": f"bear{h()}",                      # headers Authorization-Extra: Bearer ...
        "url_password": f"pw{h()}",                  # http://agent:<pw>@127.0.0.1/v1
    }
    # What httpx sends for the credentialed api_base: "Authorization: Basic <this>".
    planted["basic_auth"] = base64.b64encode(f"agent:{planted['url_password']}".encode()).decode()
    return planted


def run_everything(log_url: str, tmp_path: Path, planted: dict[str, str],
                   monkeypatch: pytest.MonkeyPatch) -> tuple[agentkd.Distiller, list[str]]:
    """A collect run and a distill run with faults that echo credentials; returns the
    distiller of the distill run and the texts of every exception raised."""
    register_prices()
    monkeypatch.setenv("OPENAI_API_KEY", planted["env_openai"])
    monkeypatch.setenv("MY_SERVICE_TOKEN", planted["env_token"])
    raised: list[str] = []

    def note(exc: BaseException) -> None:
        raised.extend([str(exc), repr(exc), "".join(traceback.format_exception(exc))])

    with FaultServer() as srv:
        base = srv.url.replace("http://", f"http://agent:{planted['url_password']}@")
        teacher_kw = {"api_base": base, "api_key": planted["teacher_key"], "timeout": 5,
                      "extra_headers": {"X-Api-Key": planted["header_key"]},
                      "headers": {"Authorization-Extra": f"Bearer {planted['bearer']}"}}
        student_kw = {"api_base": srv.url, "api_key": planted["student_key"], "timeout": 5,
                      "extra_headers": {"X-Api-Key": planted["header_key"]}}
        demos = tmp_path / "demos"
        collect = agentkd.Distiller(teacher=TEACHER, mode="collect", log=log_url,
                                    demos=str(demos), teacher_kwargs=teacher_kw)
        for t in range(2):
            with collect.episode_scope(task_id=f"collect-{t}", goal="put a mug on the desk") as ep:
                collect.completion(messages=[{"role": "user", "content": "You see a mug."}])
                ep.finish(success=True)
        collect.close()

        kd = agentkd.Distiller(teacher=TEACHER, student=STUDENT, mode="distill", log=log_url,
                               demos=str(demos), teacher_kwargs=teacher_kw,
                               student_kwargs=student_kw, teacher_retries=1)
        msgs = [{"role": "user", "content": "Your task is to: put a mug on the desk"}]
        with kd.episode_scope(task_id="student-echo") as ep:
            srv.plan(STUDENT_NAME, "echo_auth")  # the student's error body echoes its keys
            kd.completion(messages=msgs)
            ep.finish(success=True)
        assert srv.injected["echo_auth"] == 1
        # The teacher leaks the keys in every attempt; the error surfaces as TeacherError.
        srv.plan(STUDENT_NAME, "500")
        srv.always(TEACHER_NAME, "echo_auth")
        try:
            with kd.episode_scope(task_id="teacher-echo"):
                kd.completion(messages=msgs)
        except agentkd.TeacherError as exc:
            note(exc)
        else:
            raise AssertionError("the teacher fault did not surface")
        # A bad log URL carrying a password.
        try:
            agentkd.TrajectoryLog(f"postgresql+psycopg://u:{planted['url_password']}@127.0.0.1:1/x")
        except agentkd.AgentKDError as exc:
            note(exc)
        headers = srv.headers_seen
    # The planted keys did reach the provider (so the test is not vacuous). The teacher's
    # credentialed api_base makes httpx send basic auth in place of its api_key.
    sent = " ".join(str(h) for h in headers)
    for name in ("student_key", "header_key", "bearer", "basic_auth"):
        assert planted[name] in sent, name
    echoed = [c.error for c in kd.log.calls(kd.log.episodes(kd.run_id)[0].id) if c.error]
    assert echoed and "[REDACTED]" in echoed[0]  # the echo was there, and scrubbed
    check_log(kd.log, kd.run_id)
    return kd, raised


def dashboard_pages(log_url: str, episode_ids: list[int]) -> dict[str, str]:
    require(importable("fastapi"), "the dashboard pages need fastapi: pip install "
                                   "'agentkd[dashboard]'")
    from fastapi.testclient import TestClient

    from agentkd.dashboard import Dashboard
    from agentkd.dashboard.app import create_app

    client = TestClient(create_app(Dashboard(log_url, refresh_interval_s=0.0)),
                        base_url="http://127.0.0.1")
    paths = ["/", "/costs", "/cascade", "/models", "/episodes", "/episodes?format=csv",
             *[f"/episodes/{i}" for i in episode_ids],
             *[f"/episodes/{i}?format=csv&table=episode_calls" for i in episode_ids]]
    pages = {}
    for path in paths:
        response = client.get(path)
        assert response.status_code == 200, path
        pages[f"dashboard {path}"] = response.text
    return pages


def test_planted_secrets_appear_in_no_artifact(tmp_path, monkeypatch, capfd):
    planted = plant()
    db = tmp_path / "run.db"
    log_url = f"sqlite:///{db}"
    kd, raised = run_everything(log_url, tmp_path, planted, monkeypatch)

    artifacts: dict[str, bytes | str] = {}
    # The SQLite files while the writer is still open (WAL not yet checkpointed) ...
    artifacts.update({f"open {k}": v for k, v in files_under(tmp_path).items()
                      if Path(k).name.startswith("run.db")})
    assert any(k.endswith("-wal") for k in artifacts)
    episode_ids = [e.id for e in kd.log.episodes(kd.run_id)]
    artifacts.update(dashboard_pages(log_url, episode_ids))
    runner = CliRunner()
    report = runner.invoke(agentkd.cli.app, ["report", "--log", log_url, "--json",
                                             "--html", str(tmp_path / "report.html")])
    assert report.exit_code == 0, report.output
    artifacts["agentkd report --json"] = report.output
    table = runner.invoke(agentkd.cli.app, ["report", "--log", log_url])
    artifacts["agentkd report"] = table.output
    stats = runner.invoke(agentkd.cli.app, ["demos", "stats", str(tmp_path / "demos")])
    artifacts["agentkd demos stats"] = stats.output
    for i, text in enumerate(raised):
        artifacts[f"exception {i}"] = text
    artifacts["log rows"] = "\n".join(
        f"{e.status} {e.error} {e.info}" for e in kd.log.episodes(kd.run_id)) + "\n".join(
        f"{c.error}" for i in episode_ids for c in kd.log.calls(i))
    kd.close()
    kd.log.close()
    # ... and every file after closing: the database, demo store, HTML report.
    artifacts.update(files_under(tmp_path))
    out, err = capfd.readouterr()
    artifacts["stdout"], artifacts["stderr"] = out, err

    assert len(artifacts) > 20
    leaks = grep_secrets(artifacts, planted.values())
    print(f"\nsecrets planted: {len(planted)}; artifacts searched: {len(artifacts)}; "
          f"leaks: {len(leaks)}")
    assert leaks == []


@pytest.mark.postgres
def test_planted_secrets_appear_in_no_postgres_row(tmp_path, monkeypatch):
    from sqlalchemy import text

    url = os.environ.get("AGENTKD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("AGENTKD_TEST_POSTGRES_URL is not set (scripts/test.sh sets it)")
    planted = plant()
    kd, raised = run_everything(url, tmp_path, planted, monkeypatch)
    rows = []
    with kd.log.engine.connect() as conn:
        ids = [e.id for e in kd.log.episodes(kd.run_id)]
        for table, where in (("runs", "id = :run"), ("episodes", "run_id = :run"),
                             ("llm_calls", "run_id = :run")):
            rows += [str(r) for r in conn.execute(text(f"SELECT * FROM {table} WHERE {where}"),
                                                  {"run": kd.run_id})]
        rows += [str(r) for r in conn.execute(
            text("SELECT * FROM steps WHERE episode_id = ANY(:ids)"), {"ids": ids})]
    artifacts = {"postgres rows": "\n".join(rows), **files_under(tmp_path),
                 **{f"exception {i}": t for i, t in enumerate(raised)}}
    assert grep_secrets(artifacts, planted.values()) == []


def test_scrub_covers_both_header_kwargs():
    # litellm merges `headers` and `extra_headers`: a secret in either is registered.
    from agentkd import llm
    from agentkd.secrets import scrub

    a, b = pysecrets.token_hex(12), pysecrets.token_hex(12)
    llm._protect({"extra_headers": {"X-Key": a}, "headers": {"Authorization": f"Bearer {b}"}})
    assert a not in scrub(f"echo {a}") and b not in scrub(f"token was {b}")
    litellm.suppress_debug_info = True


def test_scrub_takes_key_shapes_but_not_words_that_contain_a_prefix():
    from agentkd.secrets import scrub

    text = ("You see a desk-lamp_12345 and a bookshelf_0123456789abcdefghijk. "
            "OPENAI_API_KEY=sk-proj-abcdefgh12 (sk-abcdefgh12), hf_0123456789abcdefghijk")
    assert scrub(text) == ("You see a desk-lamp_12345 and a bookshelf_0123456789abcdefghijk. "
                           "OPENAI_API_KEY=[REDACTED] ([REDACTED]), [REDACTED]")


def test_demo_store_holds_no_secret(tmp_path, monkeypatch):
    # Keys pasted into a demo's own texts (an environment key with no well-known shape, and
    # one agentkd registered) are scrubbed before they are embedded or stored.
    env_key, registered = f"demoplant{pysecrets.token_hex(16)}", f"reg{pysecrets.token_hex(16)}"
    monkeypatch.setenv("ANTHROPIC_API_KEY", env_key)
    register_secret(registered)
    both = f"ANTHROPIC_API_KEY={env_key} token {registered}"
    with DemoStore.open(tmp_path / "d", create=True) as store:
        store.add(DemoEpisode(goal=f"deploy with {both}", plan=f"paste {both}", steps=[
            DemoStep(observation=f"$ env\n{both}", action=f"echo {env_key}",
                     reasoning=f"the key is {registered}")]))
        (window,) = store.search(StepKey(goal="deploy", observation="env"))
    assert window.steps[0].action == "echo [REDACTED]"
    assert grep_secrets(files_under(tmp_path), [env_key, registered]) == []


def test_prompts_rebuild_from_scrubbed_turns(tmp_path, monkeypatch, scripted):
    # A step logs only its new turns and the hash of its whole prompt; once a key was taken
    # out of a turn, the logged hash must be that of the scrubbed prompt, or the prompts
    # could no longer be rebuilt (export), whether the agent appends or rewrites its history.
    from agentkd.export import step_prompts
    from agentkd.secrets import scrub_value

    key = f"sk-test-{pysecrets.token_hex(16)}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    scripted.scripts["scripted/teacher"] = lambda messages, n: ["Action: look"] * n
    kd = agentkd.Distiller(teacher="scripted/teacher", mode="teacher",
                           log=f"sqlite:///{tmp_path / 'log.db'}")
    system = {"role": "system", "content": "Answer with 'Action: <command>'."}
    said = {"role": "assistant", "content": "Action: look"}
    first = [system, {"role": "user", "content": "Your task is to: deploy"}]
    echoed = [*first, said, {"role": "user", "content": f"$ env\nOPENAI_API_KEY={key}"}]
    after = [*echoed, said, {"role": "user", "content": "Deployed."}]
    rewritten = [system, {"role": "user", "content": f"Summary: the key {key} was set."}]
    prompts = [first, echoed, after, rewritten, [*rewritten, said, first[1]]]
    with kd.episode_scope(task_id="t") as ep:
        for prompt in prompts:
            kd.completion(messages=prompt)
        ep.finish(success=True)
    (episode,) = kd.log.episodes(kd.run_id)
    logged = step_prompts(kd.log.steps(episode.id))
    assert logged == [scrub_value(p) for p in prompts] != prompts
    assert key not in repr(logged)
    kd.close()


def _content_agent(key_text: str) -> Callable[[], None]:
    """A user's three-step agent loop whose second observation echoes `key_text`."""
    def agent() -> None:
        messages = [{"role": "system", "content": "Answer with 'Action: <command>'."},
                    {"role": "user", "content": "Your task is to: deploy the service"}]
        for observation in ("You see a terminal.", f"$ env\n{key_text}", "Deployed."):
            reply = litellm.completion(model=CONTENT_TEACHER, messages=messages)
            messages += [{"role": "assistant", "content": reply.choices[0].message.content},
                         {"role": "user", "content": observation}]
    return agent


CONTENT_TEACHER, CONTENT_STUDENT = "openai/gpt-4o-mini", "openai/gpt-4.1-mini"


def test_a_key_in_the_content_reaches_no_file(tmp_path, monkeypatch):
    # Keys an agent pastes into its own messages: an observation echoing `env`, a teacher
    # and student answer quoting it, the goal and the episode's info. Two come from the
    # environment (one with no well-known shape), one was registered with agentkd.
    planted = {"openai": f"sk-test-{pysecrets.token_hex(16)}",
               "env_token": f"envtok{pysecrets.token_hex(16)}",
               "registered": f"reg{pysecrets.token_hex(16)}"}
    monkeypatch.setenv("OPENAI_API_KEY", planted["openai"])
    monkeypatch.setenv("MY_SERVICE_TOKEN", planted["env_token"])
    register_secret(planted["registered"])
    key_text = (f"OPENAI_API_KEY={planted['openai']} MY_SERVICE_TOKEN={planted['env_token']} "
                f"deploy password {planted['registered']}")
    log_url = f"sqlite:///{tmp_path / 'content.db'}"
    demos = tmp_path / "demos"

    collect = agentkd.Distiller(
        teacher=CONTENT_TEACHER, mode="collect", log=log_url, demos=demos,
        teacher_kwargs={"mock_response": f"Action: export {planted['env_token']}"})
    with collect.episode_scope(task_id="collect", goal=f"deploy with {key_text}") as ep:
        _content_agent(key_text)()
        ep.finish(success=True, pasted=key_text)
    collect.close()
    kd = agentkd.Distiller(
        teacher=CONTENT_TEACHER, student=CONTENT_STUDENT, mode="distill", log=log_url,
        demos=demos, cascade=agentkd.Cascade(samples=3, shadow=1.0),
        teacher_kwargs={"mock_response": f"Action: export {planted['env_token']}"},
        student_kwargs={"mock_response": f"Thought: {key_text}\nAction: export it"})
    with kd.episode_scope(task_id="distill", goal=f"deploy with {key_text}") as ep:
        _content_agent(key_text)()
        ep.finish(success=True, pasted=key_text)
    # The keys did reach the pipeline (so the test is not vacuous), and were scrubbed.
    steps = [s for e in kd.log.episodes(kd.run_id) for s in kd.log.steps(e.id)]
    assert len(steps) == 3 and all(s.shadow for s in steps)
    assert "MY_SERVICE_TOKEN=[REDACTED]" in steps[2].new_messages[-1]["content"]
    assert "[REDACTED]" in steps[0].samples[0]["content"] and steps[0].demo_block
    check_log(kd.log, kd.run_id)

    runner = CliRunner()
    for args in (["demos", "build", "--log", log_url, "--run", collect.run_id,
                  "--out", str(tmp_path / "built")],
                 ["export", "--log", log_url, "--run", collect.run_id, "--run", kd.run_id,
                  "--out", str(tmp_path / "export" / "data.jsonl"), "--val-fraction", "0"]):
        result = runner.invoke(agentkd.cli.app, args)
        assert result.exit_code == 0, result.output
    exported = (tmp_path / "export" / "data.jsonl").read_text()
    assert exported.count("MY_SERVICE_TOKEN=[REDACTED]") >= 2  # both episodes' second step
    # Every byte of every file written, the SQLite WAL while the writer is still open too.
    artifacts = {f"open {k}": v for k, v in files_under(tmp_path).items()}
    assert any(k.endswith("content.db-wal") for k in artifacts)
    kd.close()
    kd.log.close()
    artifacts.update(files_under(tmp_path))
    assert {Path(k).name for k in artifacts} >= {"content.db", "demos.sqlite", "data.jsonl"}
    assert grep_secrets(artifacts, planted.values()) == []
