#!/usr/bin/env bash
# Run the test suite: sets up the environment on first use (see scripts/env.sh).
# Extra arguments go to pytest, e.g. ./run_tests.sh -k data -x
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
sgsc_setup_python
# Tests that need the published data sets skip themselves when they are absent.
if [ -z "${SGSC_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export SGSC_DATA_DIR="$(cd ../shared/data && pwd)"
fi
exec "$PY" -m pytest "$@"
