#!/usr/bin/env bash
# Regenerate requirements.lock from requirements.in: every package pinned, for every
# platform (markers), with uv's resolver.  With --keep, versions already in the lock stay
# where they are (only what is new gets resolved), so results do not move by accident.
#   scripts/lock.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
uv="$(command -v uv || true)"
if [ -z "$uv" ]; then
    tools="$(mktemp -d)"
    python3 -m venv "$tools" && "$tools/bin/pip" install -q uv
    uv="$tools/bin/uv"
fi
constraints=()
if [ "${1:-}" = "--keep" ]; then
    grep -E '^[A-Za-z0-9_.-]+==' requirements.lock | sed 's/ *;.*//' | sort -u > .lock-keep.txt
    constraints=(-c .lock-keep.txt)
fi
{
    echo "# The pinned environment that run_tests.sh and run_all.sh install: every package,"
    echo "# direct (requirements.in) or pulled in. Regenerate with scripts/lock.sh (README)."
    echo "# environment.yml installs exactly this file; tests/test_environment.py checks both."
    "$uv" pip compile requirements.in --universal --python-version 3.11.7 --no-header \
        --no-annotate "${constraints[@]}"
} > requirements.lock.new
rm -f .lock-keep.txt
mv requirements.lock.new requirements.lock
echo "requirements.lock: $(grep -c '==' requirements.lock) pins"
