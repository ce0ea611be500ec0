# Sourced by run_tests.sh and run_all.sh: find or build the Python environment.
#
# Order: $SGSC_PYTHON if set; else the active conda environment (environment.yml);
# else ./.venv, created with `python3 -m venv` and filled from requirements.lock.
# The venv is rebuilt only when requirements.lock or pyproject.toml change (a stamp
# file holds their hash), so a second run starts at once.  Sets $PY.

sgsc_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

sgsc_lock_hash() {
    cat "$sgsc_root/requirements.lock" "$sgsc_root/pyproject.toml" | sha256sum | cut -c1-64
}

sgsc_pip() {
    # Mirrors configured on some machines print one warning per package; keep real errors.
    "$@" > >(grep -v "^WARNING: Location '" >&2) 2>&1
}

sgsc_setup_python() {
    if [ -n "${SGSC_PYTHON:-}" ]; then
        PY="$SGSC_PYTHON"
        echo "sgsc: using SGSC_PYTHON=$PY"
    elif [ -n "${CONDA_PREFIX:-}" ] && [ "${CONDA_DEFAULT_ENV:-base}" != "base" ] \
         && [ -x "$CONDA_PREFIX/bin/python" ]; then
        PY="$CONDA_PREFIX/bin/python"
        echo "sgsc: using the active conda environment $CONDA_DEFAULT_ENV"
        "$PY" -c "import sgsc" 2>/dev/null \
            || sgsc_pip "$PY" -m pip install -q --no-deps --no-build-isolation -e "$sgsc_root"
    else
        local venv="$sgsc_root/.venv" stamp="$sgsc_root/.venv/.sgsc-lock"
        PY="$venv/bin/python"
        if [ ! -x "$PY" ]; then
            echo "sgsc: creating $venv (first run: a few minutes)"
            python3 -m venv "$venv" || { echo "sgsc: python3 -m venv failed" >&2; return 1; }
        fi
        if [ "$(cat "$stamp" 2>/dev/null)" != "$(sgsc_lock_hash)" ]; then
            echo "sgsc: installing the pinned environment from requirements.lock"
            sgsc_pip "$PY" -m pip install -q --progress-bar off -r "$sgsc_root/requirements.lock" \
                || { echo "sgsc: pip install failed (see above)" >&2; return 1; }
            sgsc_pip "$PY" -m pip install -q --progress-bar off --no-deps --no-build-isolation \
                -e "$sgsc_root" || { echo "sgsc: installing sgsc itself failed" >&2; return 1; }
            sgsc_lock_hash > "$stamp"
        fi
    fi
    "$PY" -c "import sgsc, torch" || {
        echo "sgsc: the environment at $PY cannot import sgsc and torch" >&2; return 1; }
}
