#!/usr/bin/env bash
# Mutation testing of the code whose numbers agentkd sells (issue 21): mutmut 3 mutates a copy of
# each module, runs every mutant against the tests that module needs, and this prints the score
# (killed / mutants) per module.
#
#   scripts/mutation.sh                      # every module below
#   scripts/mutation.sh report llm           # some of them
#   MUTATION_JOBS=1 scripts/mutation.sh gate # one worker (default: 2), nice -n 10
#   MUTATION_SAMPLE=60 scripts/mutation.sh   # 60 mutants per module, evenly spread over the
#                                            # sorted mutant names (the same ones every run)
#   scripts/mutation.sh --without-pins llm   # the same, without tests/test_pins_*.py: what the
#                                            # pinning tests of issue 21 add
#   MUTATION_TESTS="tests/test_pins_gate.py" scripts/mutation.sh gate
#                                            # other tests than the table's below
#   MUTATION_PYTEST_ARGS="--deselect tests/x.py::test_y" scripts/mutation.sh step
#                                            # mutmut needs every selected test to pass
#                                            # unmutated: leave out one that fails today
#
# Modules: cascades (cascades/*.py), gate (cascades' gate, actions and signals only: the fast
# subset), report (agentkd/report.py), llm (agentkd/llm.py), costs (agentkd/costs.py) and
# step (the decisions of Distiller._step: its stage methods in agentkd/distiller.py).
#
# Why a staging copy ($MUTATION_DIR, default /tmp/agentkd-mutation/<module>): mutmut 3 derives a
# module's import name from its path under ./ or src/, but pyproject's package-dir maps cascades/
# to agentkd.cascades, so mutmut run in the repository would name its mutants "cascades.gate..."
# while the tests import "agentkd.cascades.gate" and no mutant would ever be switched on. The copy
# lays the package out as src/agentkd/{cascades,retrieval,memory,envs}, as installed, and mutmut
# runs there; it also keeps mutated files out of the working tree. The mutmut settings shared by
# every module are pyproject's [tool.mutmut]; this script adds which files to mutate and which
# tests to run. mutmut's own report: `cd $MUTATION_DIR/<module> && mutmut results`.
set -euo pipefail -f  # -f: the mutant-name filters are globs for mutmut, not for bash
cd "$(dirname "$0")/.."
ROOT=$PWD
STAGE_ROOT=${MUTATION_DIR:-/tmp/agentkd-mutation}
JOBS=${MUTATION_JOBS:-2}
. .venv/bin/activate
export LITELLM_LOCAL_MODEL_COST_MAP=True
# The copy's package sits elsewhere: point it at the ALFWorld data the checkout finds beside it.
if [ -z "${ALFWORLD_DATA:-}" ] && [ -d "$ROOT/../shared/data/alfworld" ]; then
    export ALFWORLD_DATA=$ROOT/../shared/data/alfworld
fi

STEP_METHODS="_step _decide _judge _label_shadow _sample_student _retrieve_demos _teacher_answers"

# module -> "files to mutate (globs under src/agentkd)|mutant-name filters|tests".
# Tests that are not there yet are left out, so the same table measures before and after.
spec() {
    case $1 in
        cascades) echo "src/agentkd/cascades/*.py|agentkd.cascades.*|tests/test_pins_gate.py \
tests/test_pins_calibration.py tests/test_calibration.py tests/test_reliability_fuzz.py \
tests/test_distiller.py" ;;
        gate) echo "src/agentkd/cascades/gate.py src/agentkd/cascades/actions.py \
src/agentkd/cascades/signals.py|agentkd.cascades.*|tests/test_pins_gate.py \
tests/test_reliability_fuzz.py tests/test_distiller.py" ;;
        report) echo "src/agentkd/report.py|agentkd.report.*|tests/test_pins_report.py \
tests/test_report.py tests/test_cache_report.py" ;;
        llm) echo "src/agentkd/llm.py|agentkd.llm.*|tests/test_pins_llm.py tests/test_cache_cascade.py \
tests/test_reliability_faults.py" ;;
        costs) echo "src/agentkd/costs.py|agentkd.costs.*|tests/test_pins_llm.py tests/test_pins_costs.py \
tests/test_costs.py tests/test_reliability_budget.py" ;;
        step)
            local filters="" m
            for m in $STEP_METHODS; do filters+="agentkd.distiller.xǁDistillerǁ${m}__mutmut_* "; done
            echo "src/agentkd/distiller.py|${filters% }|tests/test_pins_step.py tests/test_distiller.py \
tests/test_calibration.py tests/test_export.py" ;;
        *) echo "unknown module '$1': choose from cascades gate report llm costs step" >&2
           return 2 ;;
    esac
}

stage() {  # stage <dir>: the repository's sources as an installed src/ layout, its tests
    local dir=$1 pkg
    rm -rf "$dir"
    mkdir -p "$dir/src"
    cp -r "$ROOT/agentkd" "$dir/src/agentkd"
    for pkg in cascades retrieval memory envs; do cp -r "$ROOT/$pkg" "$dir/src/agentkd/$pkg"; done
    cp -r "$ROOT/tests" "$dir/tests"
    cp "$ROOT/pyproject.toml" "$dir/pyproject.toml"
    find "$dir" -name __pycache__ -prune -exec rm -rf {} +
    # There before Python starts: a PYTHONPATH entry missing at start-up is cached as
    # "nothing here", and imports would fall through to the editable install.
    mkdir -p "$dir/mutants/src"
}

# Functions that run when `import agentkd` does (it prices the shipped local models): mutmut's
# forced-fail check makes every mutated function raise, so with these mutated the tests'
# conftest could not even import agentkd ("usage error", exit 4) and no module that they
# live in could be measured. The copy leaves them unmutated.
AT_IMPORT="src/agentkd/costs.py:register_price src/agentkd/costs.py:_per_token"

keep_import_time_code() {  # keep_import_time_code <dir>: mark AT_IMPORT `no mutate block`
    # mutmut reads the pragma after the colon that ends the def, which may be lines below.
    python - "$1" $AT_IMPORT <<'EOF'
import sys
from pathlib import Path

root = Path(sys.argv[1])
for entry in sys.argv[2:]:
    path, name = entry.split(":")
    lines = (root / path).read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(f"def {name}("))
    end = next(i for i in range(at, len(lines)) if lines[i].rstrip().endswith(":"))
    lines[end] += "  # pragma: no mutate block"
    (root / path).write_text("\n".join(lines) + "\n")
EOF
}

configure() {  # configure <dir> <files> <tests>: the module's keys in the copy's [tool.mutmut]
    python - "$1/pyproject.toml" "$2" "$3" "${MUTATION_PYTEST_ARGS:-}" <<'EOF'
import json, shlex, sys, tomllib
from pathlib import Path

path, files, tests = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3].split()
lines = path.read_text().splitlines()
shared = tomllib.loads(path.read_text())["tool"]["mutmut"]
at = lines.index("[tool.mutmut]") + 1  # keys may come anywhere in their table
lines = [line for line in lines if not line.startswith("pytest_add_cli_args =")]
lines[at:at] = [f"source_paths = {json.dumps(['src/agentkd'])}",
                f"only_mutate = {json.dumps(files)}",
                f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
                "pytest_add_cli_args = " + json.dumps(
                    shared.get("pytest_add_cli_args", []) + shlex.split(sys.argv[4]))]
path.write_text("\n".join(lines) + "\n")
EOF
}

score() {  # score <dir> <module> <filters>: killed / mutants of the filtered mutant names
    python - "$@" <<'EOF'
import fnmatch, json, sys
from pathlib import Path

from mutmut.stats import status_by_exit_code

dir, module, filters = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split()
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
counts: dict[str, int] = {}
for meta in (dir / "mutants").rglob("*.py.meta"):
    for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
        if any(fnmatch.fnmatchcase(name, f) for f in filters):
            status = status_by_exit_code[code]
            counts[status] = counts.get(status, 0) + 1
tried = sum(n for s, n in counts.items() if s not in ("not checked", "skipped"))
killed = sum(n for s, n in counts.items() if s in KILLED)
detail = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()))
pct = f"{100 * killed / tried:.1f}%" if tried else "–"
line = f"{module:<9} {killed:>4} / {tried:<4} {pct:>6}   ({detail})"
print(line)
with open(dir.parent / "scores.txt", "a") as out:
    out.write(line + "\n")
EOF
}

mutmut_in() {  # mutmut_in <dir> <mutant names or filters...>
    local dir=$1; shift
    # Subprocesses the tests start (the CLI) import the mutants too, not the editable install.
    # One OpenMP thread: mutmut forks each mutant's run from a parent in which torch (the
    # retrieval embedder) has started its thread pool, and a forked child waits forever on
    # pool threads that did not survive the fork.
    (cd "$dir" && PYTHONPATH="$dir/mutants/src" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
        nice -n 10 mutmut run --max-children "$JOBS" "$@")
}

sample() {  # sample <dir> <filters> <n>: n mutant names, evenly spread over the sorted names
    python - "$@" <<'EOF2'
import fnmatch, json, sys
from pathlib import Path

dir, filters, n = Path(sys.argv[1]), sys.argv[2].split(), int(sys.argv[3])
names = sorted(name for meta in (dir / "mutants").rglob("*.py.meta")
               for name in json.loads(meta.read_text())["exit_code_by_key"]
               if any(fnmatch.fnmatchcase(name, f) for f in filters))
if not names:
    sys.exit(f"no mutants generated in {dir}; see {dir}/generate.log")
step = max(1, len(names) / n)
print(" ".join(names[int(i * step)] for i in range(min(n, len(names)))))
EOF2
}

without_pins=""
if [ "${1:-}" = --without-pins ]; then without_pins=1; shift; fi
modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=(cascades report llm costs step)
mkdir -p "$STAGE_ROOT"
for module in "${modules[@]}"; do
    IFS='|' read -r files filters tests <<<"$(spec "$module")"
    tests=${MUTATION_TESTS:-$tests}
    present=""
    for t in $tests; do
        [ -f "$ROOT/$t" ] && ! { [ -n "$without_pins" ] && [[ $t == tests/test_pins_* ]]; } \
            && present+="$t "
    done
    dir=$STAGE_ROOT/$module
    stage "$dir"
    keep_import_time_code "$dir"
    configure "$dir" "$files" "$present"
    echo "== $module: mutating $files; tests: $present" >&2
    names=$filters
    if [ -n "${MUTATION_SAMPLE:-}" ]; then
        # A filter nothing matches: mutmut generates the mutants and maps tests, then stops.
        mutmut_in "$dir" "no-such-mutant" >"$dir/generate.log" 2>&1 || true
        names=$(sample "$dir" "$filters" "$MUTATION_SAMPLE")
    fi
    mutmut_in "$dir" $names >"$dir/mutmut.log" 2>&1 \
        || { echo "mutmut failed for $module; see $dir/mutmut.log:" >&2
             tail -20 "$dir/mutmut.log" >&2; exit 1; }
    score "$dir" "$module${MUTATION_SAMPLE:+ (sample)}${without_pins:+ without pins}" "$names"
done
