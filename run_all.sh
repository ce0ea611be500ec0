#!/usr/bin/env bash
# Regenerate every result: executes each notebook with papermill into reports/<profile>/.
# Usage: ./run_all.sh [--profile quick|paper|full] [--force] [--device auto|cpu|cuda]
set -euo pipefail
cd "$(dirname "$0")"

profile=paper force=0 device=auto
usage() { sed -n '2,3p' "$0" | sed 's/^# //'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs quick, paper or full}"; shift 2 ;;
        --profile=*) profile="${1#*=}"; shift ;;
        --device) device="${2:?--device needs auto, cpu or cuda}"; shift 2 ;;
        --force) force=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "run_all.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
case "$profile" in quick|paper|full) ;; *)
    echo "run_all.sh: --profile must be quick, paper or full, not '$profile'" >&2; exit 2 ;;
esac
case "$device" in auto|cpu|cuda) ;; *)
    echo "run_all.sh: --device must be auto, cpu or cuda, not '$device'" >&2; exit 2 ;;
esac

source scripts/env.sh
sgsc_setup_python
if [ -z "${SGSC_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export SGSC_DATA_DIR="$(cd ../shared/data && pwd)"
fi

out="reports/$profile"
mkdir -p "$out/figures"
shopt -s nullglob
notebooks=(notebooks/[0-9]*.ipynb)
if [ ${#notebooks[@]} -eq 0 ]; then
    echo "run_all.sh: no notebooks in notebooks/ yet; nothing to run"
    exit 0
fi
for nb in "${notebooks[@]}"; do
    name="$(basename "$nb" .ipynb)"
    echo "== $name ($profile)"
    "$PY" -m papermill "$nb" "$out/$name.ipynb" -p profile "$profile" -p device "$device" \
        -p force "$force" --cwd notebooks
    "$PY" -m nbconvert --to html --log-level WARN "$out/$name.ipynb"
done
echo "reports written to $out/"
