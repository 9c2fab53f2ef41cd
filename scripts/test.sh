#!/usr/bin/env bash
# Set up (scripts/setup.sh), start the services the slow suites need (PostgreSQL; Debian's
# chromium for the dashboard's browser tests), then run the whole test suite:
# the fast default suite first, then the slow / postgres / browser suites.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export LITELLM_LOCAL_MODEL_COST_MAP=True

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if ! command -v pg_ctlcluster >/dev/null || ! command -v chromium >/dev/null; then
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql chromium >/dev/null
    fi
    service postgresql start >/dev/null
    for _ in $(seq 30); do su postgres -c "pg_isready -q" && break; sleep 1; done
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\""
    su postgres -c "psql -qtc \"SELECT 1 FROM pg_database WHERE datname='agentkd_test'\"" \
        | grep -q 1 || su postgres -c "createdb agentkd_test"
    export AGENTKD_TEST_POSTGRES_URL=${AGENTKD_TEST_POSTGRES_URL:-postgresql+psycopg://postgres:postgres@127.0.0.1:5432/agentkd_test}
fi

ruff check .
mypy agentkd cascades retrieval envs memory
python -m pytest -q                                   # fast default suite
python -m pytest -q -m "slow or postgres or browser"  # real LLMs, ALFWorld, PostgreSQL, browser
