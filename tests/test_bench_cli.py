"""`agentkd bench alfworld` reports a configuration error before it draws any progress bar."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentkd.cli import app


@pytest.mark.parametrize(("args", "message"), [
    (["--mode", "icd", "--student", "scripted/student", "--demos", "{tmp}/no-store"],
     "no-store"),
    (["--mode", "distil"], "unknown mode 'distil'"),
    (["--mode", "teacher", "--teacher", "alfworld/experts"], "unknown ALFWorld teacher"),
    (["--mode", "student", "--student", "local/qwen-typo"], "unknown local model"),
    (["--mode", "teacher", "--max-steps", "0"], "--max-steps must be >= 1"),
    (["--mode", "teacher", "--split", "valid_nowhere"], "unknown ALFWorld split"),
    (["--mode", "teacher", "--price", "openai/qwen=1"], "MODEL=IN,OUT"),
    (["--mode", "distill", "--student", "scripted/student", "--grow-demos", "--workers", "2",
      "--demos", "{tmp}/grown"], "one writer: use --workers 1"),
])
def test_a_configuration_error_comes_before_any_progress(args: list[str], message: str,
                                                         terminal: io.StringIO,
                                                         tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    argv = ["bench", "alfworld", "--episodes", "1", "--log", url,
            *(a.replace("{tmp}", str(tmp_path)) for a in args)]
    result = CliRunner().invoke(app, argv)
    shown = terminal.getvalue()
    assert result.exit_code == 2, (shown, result.output)
    assert "error:" in shown and message in " ".join(shown.split()), shown
    # Nothing before the error: a live bar would start with its cursor codes and title.
    assert shown.startswith("error:"), shown
