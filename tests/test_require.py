"""`require` (tests/conftest.py): a missing dependency skips locally and fails under CI=true."""

from __future__ import annotations

import pytest
from conftest import importable, require


def test_a_present_dependency_neither_skips_nor_fails(monkeypatch):
    monkeypatch.setenv("CI", "true")
    assert importable("sqlalchemy")
    require(importable("sqlalchemy"), "never shown")


def test_a_missing_dependency_skips_locally(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="^/usr/bin/chromium missing$"):
        require(False, "/usr/bin/chromium missing")


@pytest.mark.parametrize("ci", ["true", "TRUE"])
def test_a_missing_dependency_fails_under_ci(ci, monkeypatch):
    monkeypatch.setenv("CI", ci)
    assert not importable("agentkd_no_such_extra")
    with pytest.raises(pytest.fail.Exception, match=r"needs the extra \(CI=true: a missing"):
        require(importable("agentkd_no_such_extra"), "needs the extra")
