#!/usr/bin/env bash
# The toy clip's edits checked as the demo's page test checks them, for a candidate model:
# the main command (jobs/toy.toml) at one tuning rate over several tuning seeds, and the browser
# test's CI setting (10 tuning steps, 5 + 5 DDIM steps); each run's edits checked by the page
# test's own rules (tests/browser/job.test.mjs: colours, grass, flash frames).
#
#   bash benches/toy/clip_checks.sh MODEL LR OUT [SEED...]      # seeds default to 33 34 35
#
# TAV names the binary (default target/debug/tav; target/debug/tav-torch with DEVICE=torch is
# about 30 s a run on 2 cores). Needs node.
set -uo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
[ $# -ge 3 ] || { echo "usage: $0 MODEL LR OUT [SEED...]" >&2; exit 2; }
model=$1 lr=$2 out=$3; shift 3
seeds=${*:-33 34 35}
tav=${TAV:-$root/target/debug/tav} device=${DEVICE:-flex}
mkdir -p "$out"
check() {
  echo "== $1"
  node "$root/tests/browser/job.test.mjs" "$2" | grep -v '^ok'
}
run() {
  local dir=$1; shift
  "$tav" run "$root/jobs/toy.toml" --model "$model" --lr "$lr" --out "$dir" --device "$device" "$@" \
    >"$dir.log" 2>&1 || { echo "tav run failed: see $dir.log"; return 1; }
}
run "$out/ci" --seed 33 --steps 10 --inversion-steps 5 --inference-steps 5 && check "CI's setting (10 + 5 + 5)" "$out/ci"
for seed in $seeds; do
  run "$out/job-$seed" --seed "$seed" && check "the job at $lr, seed $seed" "$out/job-$seed"
done
