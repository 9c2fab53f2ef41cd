"""Commands that only read the log refuse a log that is not there, and create nothing; and
`agentkd --version`.

A mistyped `--log sqlite:///typo.db` used to create an empty database (and its folders) and
report an empty table with exit code 0.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import importable, require
from typer.testing import CliRunner

import agentkd
from agentkd.cli import app
from agentkd.errors import MissingLogError
from agentkd.log import TrajectoryLog


def read_only_commands(log: str, out: Path) -> dict[str, list[str]]:
    """Every read-only command, writing whatever it writes under `out`."""
    return {
        "report": ["report", "--log", log],
        "report --html": ["report", "--log", log, "--html", str(out / "report.html")],
        "export": ["export", "--log", log, "--run", "r", "--out", str(out / "data.jsonl")],
        "calibrate": ["calibrate", "--log", log, "--run", "r",
                      "--out", str(out / "cascade.json")],
        "demos build": ["demos", "build", "--log", log, "--run", "r",
                        "--out", str(out / "demos")],
        "dashboard": ["dashboard", "--log", log, "--port", "1"],
    }


COMMANDS = list(read_only_commands("", Path()))


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in sorted(folder.rglob("*"))}


def _no_serving(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("the dashboard opened a log that is not there and served it")


def invoke(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    if args[0] == "dashboard" or "--html" in args:
        require(importable("fastapi") and importable("jinja2"),
                "the dashboard needs fastapi and jinja2: pip install 'agentkd[dashboard]'")
    if args[0] == "dashboard":  # a dashboard that opened the log would serve until killed
        monkeypatch.setattr("uvicorn.run", _no_serving)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the dashboard's cache
    result = CliRunner().invoke(app, args)
    return result.exit_code, result.output


def says(output: str, message: str) -> bool:
    """Whether `output` holds `message`, however the console wrapped it."""
    return "".join(message.split()) in "".join(output.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_a_missing_sqlite_log_is_refused_and_nothing_is_created(command, tmp_path, monkeypatch):
    url = "sqlite:///typo/nested/typo.db"  # relative, in tmp_path: a mistyped path
    code, output = invoke(read_only_commands(url, tmp_path / "out")[command], tmp_path,
                          monkeypatch)
    assert code != 0, output
    assert says(output, f"no agentkd log at {url}: there is no file "
                        f"{tmp_path}/typo/nested/typo.db; check the log's path (--log)")
    assert files(tmp_path) == {}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_without_agentkd_tables_is_refused_and_left_alone(command, tmp_path,
                                                                     monkeypatch):
    db = tmp_path / "other.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    conn.close()
    before = files(tmp_path)
    url = f"sqlite:///{db}"
    code, output = invoke(read_only_commands(url, tmp_path / "out")[command], tmp_path,
                          monkeypatch)
    assert code != 0, output
    assert says(output, f"no agentkd log at {url}: the database has no agentkd tables")
    assert files(tmp_path) == before  # no tables, no WAL switch, no output files


def test_trajectory_log_create_false_opens_an_existing_log_only(tmp_path):
    url = f"sqlite:///{tmp_path / 'log.db'}"
    with pytest.raises(MissingLogError, match="no agentkd log at"):
        TrajectoryLog(url, create=False)
    assert files(tmp_path) == {}
    TrajectoryLog(url).ensure_run("r", mode="teacher", teacher="t", student=None)
    log = TrajectoryLog(url, create=False)
    assert log.episodes("r") == [] and log.run_cost("r") == 0.0
    log.close()
    # A file that is not SQLite at all is a clear error too, not a traceback.
    (tmp_path / "notes.txt").write_text("not a database " * 100)
    with pytest.raises(agentkd.ConfigError, match="cannot open the log at"):
        TrajectoryLog(f"sqlite:///{tmp_path / 'notes.txt'}", create=False)


@pytest.mark.postgres
def test_a_postgres_database_without_agentkd_tables_is_refused():
    import os

    from sqlalchemy import create_engine, text

    url = os.environ.get("AGENTKD_TEST_POSTGRES_URL")
    if not url:
        pytest.fail("AGENTKD_TEST_POSTGRES_URL is not set (scripts/test.sh sets it)")
    schema = "agentkd_empty_test"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    empty = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    try:
        with pytest.raises(MissingLogError, match="no 'runs' table"):
            TrajectoryLog(empty, create=False)
        with engine.connect() as conn:  # and nothing was created in it
            assert conn.execute(text(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = :s"),
                {"s": schema}).scalar_one() == 0
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def test_version_prints_the_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"agentkd {agentkd.__version__}\n"
