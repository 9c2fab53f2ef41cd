"""Resumable phases: run each in order, cache what it produced in a marker file, skip it next time.

A phase is a name, the settings that decide its result and a function producing its outputs
(JSON-able). Its fingerprint hashes its settings together with the fingerprint of the phase
before it, so changing one phase's settings changes its fingerprint and every later one's.
A finished phase writes ``phases/<name>.json`` (fingerprint, settings, outputs, seconds); a rerun
whose fingerprint matches the marker skips it and reuses the outputs, and once a phase runs,
every later phase runs too. A phase that was interrupted wrote no marker and runs again; it is
up to the phase to continue its own work (its folders and run ids carry the fingerprint).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

MARKER_DIR = "phases"
Context = TypeVar("Context")


class PhaseInterrupted(KeyboardInterrupt):
    """Ctrl-C during a phase: its marker is not written, and a rerun continues it."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


@dataclass(frozen=True)
class Phase(Generic[Context]):
    """One step of a pipeline. `settings` gives what decides its result (it is fingerprinted);
    `run` does the work in a context and returns the outputs later phases read."""

    name: str
    settings: Callable[[Context], Mapping[str, Any]]
    run: Callable[[Context, Mapping[str, Mapping[str, Any]]], Mapping[str, Any]]


@dataclass
class Marker:
    phase: str
    fingerprint: str
    settings: dict[str, Any]
    outputs: dict[str, Any]
    seconds: float


def fingerprint(settings: Mapping[str, Any], previous: str = "") -> str:
    """A short stable hash of `settings` chained to the previous phase's fingerprint."""
    body = json.dumps(settings, sort_keys=True, default=str) + previous
    return hashlib.sha256(body.encode()).hexdigest()[:12]


def marker_path(workdir: Path, name: str) -> Path:
    return workdir / MARKER_DIR / f"{name}.json"


def read_marker(workdir: Path, name: str) -> Marker | None:
    """The marker of a finished phase, or None (missing, or unreadable: the phase reruns)."""
    try:
        data = json.loads(marker_path(workdir, name).read_text(encoding="utf-8"))
        return Marker(**data)
    except (OSError, ValueError, TypeError):
        return None


def write_marker(workdir: Path, marker: Marker) -> None:
    path = marker_path(workdir, marker.phase)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".json.partial")
    partial.write_text(json.dumps(marker.__dict__, indent=2, default=str) + "\n",
                       encoding="utf-8")
    partial.replace(path)  # atomic: a marker is either whole or absent


def fingerprints(phases: Sequence[Phase[Context]], context: Context) -> dict[str, str]:
    """Phase name → its fingerprint in `context`."""
    out: dict[str, str] = {}
    previous = ""
    for phase in phases:
        previous = out[phase.name] = fingerprint(phase.settings(context), previous)
    return out


def run_phases(phases: Sequence[Phase[Context]], context: Context, workdir: Path,
               say: Callable[[str], None]) -> Iterator[tuple[str, Mapping[str, Any], bool]]:
    """Run or skip each phase in order; yields (name, outputs, ran) after each one.

    Ctrl-C inside a phase raises `PhaseInterrupted` naming it.
    """
    outputs: dict[str, Mapping[str, Any]] = {}
    prints = fingerprints(phases, context)
    redo = False
    for phase in phases:
        marker = read_marker(workdir, phase.name)
        if not redo and marker is not None and marker.fingerprint == prints[phase.name]:
            say(f"{phase.name}: done, skipped")
            outputs[phase.name] = marker.outputs
            yield phase.name, marker.outputs, False
            continue
        redo = True
        start = time.perf_counter()
        try:
            result = dict(phase.run(context, outputs))
        except KeyboardInterrupt:
            raise PhaseInterrupted(phase.name) from None
        seconds = round(time.perf_counter() - start, 1)
        write_marker(workdir, Marker(phase.name, prints[phase.name],
                                     dict(phase.settings(context)), result, seconds))
        outputs[phase.name] = result
        say(f"{phase.name}: done in {seconds:.0f} s")
        yield phase.name, result, True
