#!/usr/bin/env bash
# Regenerate every result: executes each notebook with papermill into reports/<profile>/,
# converts it to HTML, times it, and builds reports/<profile>/index.html.
# Usage: ./run_all.sh [--profile quick|paper|full] [--force] [--device auto|cpu|cuda] [--threads N]
set -euo pipefail
cd "$(dirname "$0")"

profile=paper force=0 device=auto threads=""
usage() { sed -n '2,4p' "$0" | sed 's/^# //'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs quick, paper or full}"; shift 2 ;;
        --profile=*) profile="${1#*=}"; shift ;;
        --device) device="${2:?--device needs auto, cpu or cuda}"; shift 2 ;;
        --threads) threads="${2:?--threads needs a number (0: torch default)}"; shift 2 ;;
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
case "$threads" in ""|*[!0-9]*) [ -z "$threads" ] || {
    echo "run_all.sh: --threads must be a non-negative integer, not '$threads'" >&2; exit 2; } ;;
esac

source scripts/env.sh
sgsc_setup_python
if [ -z "${SGSC_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
    export SGSC_DATA_DIR="$(cd ../shared/data && pwd)"
fi

out="reports/$profile"
mkdir -p "$out/figures" "$out/metrics"
shopt -s nullglob
notebooks=(notebooks/[0-9]*.ipynb)
if [ ${#notebooks[@]} -eq 0 ]; then
    echo "run_all.sh: no notebooks in notebooks/ yet; nothing to run"
    exit 0
fi

params=(-p profile "$profile" -p device "$device" -p force "$force"
        -p report_dir "../$out")
[ -z "$threads" ] || params+=(-p threads "$threads")
timings="$out/metrics/timings.json"
entries=() failed=() total_start=$(date +%s.%N)
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
write_timings() {
    local IFS=,
    printf '[%s]\n' "${entries[*]}" > "$timings"
}

for nb in "${notebooks[@]}"; do
    name="$(basename "$nb" .ipynb)"
    echo "== $name ($profile)"
    start=$(date +%s.%N) status=ok
    "$PY" -m papermill "$nb" "$out/$name.ipynb" "${params[@]}" --cwd notebooks \
        --log-level WARNING || status=failed
    wall=$(seconds_since "$start")
    # A failed notebook is converted too: its HTML shows where and why it stopped.
    "$PY" -m nbconvert --to html --log-level ERROR "$out/$name.ipynb" || status=failed
    entries+=("{\"notebook\": \"$name\", \"status\": \"$status\", \"wall_s\": $wall}")
    write_timings
    echo "   $name: $status in ${wall} s"
    [ "$status" = ok ] || failed+=("$name")
done
entries+=("{\"notebook\": \"all notebooks\", \"status\": \"${#failed[@]} failed\", \
\"wall_s\": $(seconds_since "$total_start")}")
write_timings

"$PY" -m sgsc report --profile "$profile"
echo "report: $out/index.html (open it in a browser); executed notebooks in $out/"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run_all.sh: failed notebooks: ${failed[*]}" >&2
    exit 1
fi
