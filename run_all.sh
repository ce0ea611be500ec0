#!/usr/bin/env bash
# Regenerate every result: executes each notebook with papermill into reports/<profile>/,
# converts it to HTML, times it, and builds reports/<profile>/index.html.
# Usage: ./run_all.sh [--profile quick|paper|full] [--force] [--device auto|cpu|cuda]
#                     [--threads N] [--jobs N]   (--jobs N > 1: train the runs on N workers
#                      first, then run notebooks side by side; default 2 on 2+ cores)
set -euo pipefail
cd "$(dirname "$0")"

# two jobs where there are two cores: the runs are single-threaded, so one per core
profile=paper force=0 device=auto threads="" jobs=$(( $(nproc 2>/dev/null || echo 1) >= 2 ? 2 : 1 ))
usage() { sed -n '2,6p' "$0" | sed 's/^# //'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --profile) profile="${2:?--profile needs quick, paper or full}"; shift 2 ;;
        --profile=*) profile="${1#*=}"; shift ;;
        --device) device="${2:?--device needs auto, cpu or cuda}"; shift 2 ;;
        --threads) threads="${2:?--threads needs a number (0: torch default)}"; shift 2 ;;
        --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
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

case "$jobs" in ""|0|*[!0-9]*)
    echo "run_all.sh: --jobs must be a positive integer, not '$jobs'" >&2; exit 2 ;;
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

# With --jobs N > 1 the training runs of 01 and 02 are trained first on N single-threaded
# workers (python -m sgsc pretrain), and those of 06-08 (python -m sgsc regimes --extras);
# the notebooks then find them in runs/<profile>.
pretrain_entry=""
total_start=$(date +%s.%N)
if [ "$jobs" -gt 1 ]; then
    if [ "$force" = 1 ]; then rm -rf "runs/$profile"; force=0; fi
    echo "== pretrain ($profile, $jobs workers)"
    start=$(date +%s.%N)
    pretrain_status=ok
    "$PY" -m sgsc pretrain --profile "$profile" --workers "$jobs" --device "$device" \
        --out runs --no-progress || pretrain_status=failed
    "$PY" -m sgsc regimes --profile "$profile" --workers "$jobs" --out "runs/$profile" \
        --device "$device" --extras || pretrain_status=failed
    pretrain_entry="{\"notebook\": \"pretrain\", \"status\": \"$pretrain_status\", \
\"wall_s\": $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'), \
\"workers\": $jobs, \"cores\": $(nproc)}"
fi

params=(-p profile "$profile" -p device "$device" -p force "$force"
        -p report_dir "../$out")
[ -z "$threads" ] || params+=(-p threads "$threads")
timings="$out/metrics/timings.json"
entry_dir="$(mktemp -d)"
trap 'rm -rf "$entry_dir"' EXIT
seconds_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
write_timings() {  # the pretraining, then one entry per finished notebook, in order
    local entries=() IFS=,
    [ -z "$pretrain_entry" ] || entries+=("$pretrain_entry")
    for nb in "${notebooks[@]}"; do
        f="$entry_dir/$(basename "$nb" .ipynb)"
        [ -f "$f" ] && entries+=("$(cat "$f")")
    done
    [ $# -eq 0 ] || entries+=("$1")
    printf '[%s]\n' "${entries[*]}" > "$timings"
}
run_notebook() {
    local nb="$1" name start status=ok wall
    name="$(basename "$nb" .ipynb)"
    echo "== $name ($profile)"
    start=$(date +%s.%N)
    "$PY" -m papermill "$nb" "$out/$name.ipynb" "${params[@]}" --cwd notebooks \
        --log-level WARNING || status=failed
    wall=$(seconds_since "$start")
    # A failed notebook is converted too: its HTML shows where and why it stopped.
    "$PY" -m nbconvert --to html --log-level ERROR "$out/$name.ipynb" || status=failed
    echo "{\"notebook\": \"$name\", \"status\": \"$status\", \"wall_s\": $wall}" \
        > "$entry_dir/$name"
    echo "   $name: $status in ${wall} s"
}

# The paper-claims notebook reads the metrics the others write, so it runs after them;
# the others are independent and run up to --jobs at a time.
for nb in "${notebooks[@]}"; do
    case "$nb" in *_paper_claims.ipynb) continue ;; esac
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
    run_notebook "$nb" &
done
wait
write_timings
for nb in "${notebooks[@]}"; do
    case "$nb" in *_paper_claims.ipynb) run_notebook "$nb"; write_timings ;; esac
done
failed=()
for f in "$entry_dir"/*; do
    grep -q '"status": "ok"' "$f" || failed+=("$(basename "$f")")
done
write_timings "{\"notebook\": \"all (pretrain and notebooks)\", \"status\": \"${#failed[@]} failed\", \
\"wall_s\": $(seconds_since "$total_start")}"

"$PY" -m sgsc report --profile "$profile"
echo "report: $out/index.html (open it in a browser); executed notebooks in $out/"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run_all.sh: failed notebooks: ${failed[*]}" >&2
    exit 1
fi
