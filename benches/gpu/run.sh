#!/usr/bin/env bash
# The GPU check in one command (docs/testing.md, "The GPU check"). Run on the GPU machine,
# from the repository root, after benches/gpu/prepare.sh ran on the CPU machine:
#
#   bash benches/gpu/run.sh            # the real check: SD v1.5 sizes, beside PyTorch
#   bash benches/gpu/run.sh --dry-run  # the same stages at tiny sizes (lavapipe here; the test command)
#
# Writes JSON lines to $OUT/gpu.jsonl as it goes (a killed run still returns what it had) and
# every stage's output to $OUT/log.txt. In order: the adapter; the golden set on every path;
# `tav plan` and `tav bench` at 8, 16 and 24 frames beside the reference's UNet in PyTorch;
# the attention kernels beside scaled_dot_product_attention on SD's three shapes; a whole
# `tav run` of car-turn on random SD v1.5 weights with its peak memory against the plan.
# Each stage has a time budget, and the whole run a deadline (TAV_GPU_DEADLINE_S, 450 s),
# so it ends inside the device's limits whatever a stage does.
set -uo pipefail

dry=0
if [ "${1:-}" = "--dry-run" ]; then
  dry=1
elif [ $# -gt 0 ]; then
  echo "usage: bash benches/gpu/run.sh [--dry-run]" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=benches/gpu/carry
out=${OUT:-$root/target/gpu-check$([ $dry = 1 ] && echo -dry-run)}
mkdir -p "$out"
log=$out/gpu.jsonl
text=$out/log.txt
: >"$log"
: >"$text"
work=$(mktemp -d "${TMPDIR:-/tmp}/tav-gpu.XXXXXX")
trap 'rm -rf "$work"' EXIT
started=$(date +%s)
deadline=$((started + ${TAV_GPU_DEADLINE_S:-450}))
failed=0

json_string() { # a shell string as a JSON string
  printf '"%s"' "$(printf '%s' "$1" | tr '\n\r\t' '   ' | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
}
emit() { echo "$1" >>"$log"; }
say() { echo "== $*" | tee -a "$text" >&2; }

# stage NAME BUDGET_S COMMAND...: runs COMMAND within its budget (and the deadline), copies
# its JSON lines to gpu.jsonl tagged with the stage, its output to log.txt, and records how
# it ended. A stage that fails is recorded and the next one runs.
stage() {
  local name=$1 budget=$2
  shift 2
  local now left
  now=$(date +%s)
  left=$((deadline - now))
  if [ "$left" -lt 5 ]; then
    emit "{\"stage\":\"$name\",\"skipped\":\"the run's deadline has passed\"}"
    say "$name: skipped (deadline)"
    return 1
  fi
  [ "$budget" -gt "$left" ] && budget=$left
  say "$name (budget ${budget} s): $*"
  local t0 t1 rc
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$budget" "$@" >"$work/stdout" 2>"$work/stderr"
  rc=$?
  t1=$(date +%s.%N)
  grep '^{' "$work/stdout" | sed "s/^{/{\"stage\":\"$name\",/" >>"$log"
  { grep -v '^{' "$work/stdout"; tail -n 40 "$work/stderr"; } >>"$text"
  local seconds
  seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  local timed_out=false
  [ $rc = 124 ] || [ $rc = 137 ] && timed_out=true
  local tail_err
  tail_err=$(tail -n 3 "$work/stderr")
  emit "{\"stage\":\"$name\",\"done\":true,\"rc\":$rc,\"timed_out\":$timed_out,\"seconds\":$seconds,\"stderr_tail\":$(json_string "$tail_err")}"
  if [ $rc != 0 ]; then
    failed=$((failed + 1))
    say "$name: exit $rc after $seconds s"
  fi
  return $rc
}
unxz_to() { # FILE.xz OUT: with xz, or Python's lzma where xz is missing
  if command -v xz >/dev/null 2>&1; then
    xz -dc "$1" >"$2"
  else
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"
  fi
}
skip() { # NAME REASON
  emit "{\"stage\":\"$1\",\"skipped\":$(json_string "$2")}"
  say "$1: skipped: $2"
}

# ---- what runs where -------------------------------------------------------------------------
if [ $dry = 1 ]; then
  tav=${TAV_BIN:-$root/target/debug/tav}
  # One frame count, each step timed once: the dry run is in the test command.
  config=tiny size=64 frame_counts="2" runs=1 py_runs=1 f16=""
  # SD's three attention shapes, scaled down: tokens per frame, head size (heads: 2).
  attention_shapes="64:8 16:16" heads=2 attention_frames=3
  video=${TAV_GPU_VIDEO:-$root/../shared/videos/car-turn.mp4}
  run_args=(--frames 2 --width 64 --height 64 --steps 1 --inversion-steps 1 --inference-steps 1)
  python=${TAV_GPU_PYTHON:-python3}
  reference=${TAV_REFERENCE:-$carry/Tune-A-Video}
  py_device=cpu
  golden_bin=""
else
  # The Vulkan loader (the NVIDIA driver is there, the loader may not be) and the wheels.
  for deb in "$carry"/gl/*.deb; do [ -e "$deb" ] && dpkg -x "$deb" /; done
  ldconfig 2>/dev/null || true
  if ls "$carry"/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$work/site" "$carry"/wheels/*.whl && export PYTHONPATH=$work/site
  fi
  mkdir -p "$work/bin"
  if [ -e "$carry/tav.xz" ]; then
    unxz_to "$carry/tav.xz" "$work/bin/tav" && chmod +x "$work/bin/tav"
  elif [ -e "$carry/tav" ]; then
    cp "$carry/tav" "$work/bin/tav"
  fi
  tav=$work/bin/tav
  config=sd15 size=512 frame_counts="8 16 24" runs=3 py_runs=3 f16=--f16
  attention_shapes="4096:40 1024:80 256:160" heads=8 attention_frames=8
  video=$carry/car-turn.mp4
  run_args=(--frames 8 --width 512 --height 512 --steps 50 --inversion-steps 10 --inference-steps 10 --f16)
  python=python3
  reference=$carry/Tune-A-Video
  py_device=cuda
  golden_bin=$carry/golden.xz
fi
emit "{\"stage\":\"start\",\"dry_run\":$([ $dry = 1 ] && echo true || echo false),\"commit\":$(json_string "$(git rev-parse HEAD 2>/dev/null || cat "$carry/commit" 2>/dev/null)"),\"host\":$(json_string "$(uname -srm)")}"
if [ ! -x "$tav" ]; then
  skip all "no tav binary at $tav (run benches/gpu/prepare.sh first; a dry run uses target/debug/tav)"
  exit 1
fi

# ---- 1. the adapter ------------------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
  stage nvidia-smi 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
fi
if ! stage probe 60 "$tav" bench --probe; then
  # The driver's ICD file, where the loader does not find it by itself.
  if [ -e /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
    export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
    stage probe-icd 60 "$tav" bench --probe || true
  fi
fi

# ---- 2. the golden set on every path --------------------------------------------------------
if [ $dry = 1 ]; then
  skip golden "the dry run leaves the golden set to the test command's cargo tests (tests/golden.rs)"
elif [ -e "$golden_bin" ] && [ -d "$carry/golden" ]; then
  unxz_to "$golden_bin" "$work/bin/golden" && chmod +x "$work/bin/golden"
  TAV_GOLDEN_DIRS=$(ls -d "$root/$carry"/golden/*/ | tr '\n' ':') TAV_GOLDEN_FULL=1 \
    TAV_GOLDEN_PLAIN_DEVICE=wgpu stage golden 120 "$work/bin/golden" --test-threads 1 --nocapture
else
  skip golden "no golden set carried: tiny-a (37 MB) does not fit the 64 MiB that travel beside the repository's 33 MB (docs/testing.md)"
fi

# ---- 3. plan and bench at each frame count, beside the reference in PyTorch ----------------
have_reference=0
if "$python" -c 'import torch, diffusers, einops' >/dev/null 2>&1 && [ -d "$reference/tuneavideo" ]; then
  have_reference=1
fi
for frames in $frame_counts; do
  stage "plan-$frames" 30 "$tav" plan --config $config --frames "$frames" --width $size --height $size $f16 --json
  stage "bench-$frames" $((30 + 10 * frames)) "$tav" bench --config $config --size $size --frames "$frames" --runs $runs $f16
  if [ $have_reference = 1 ]; then
    stage "pytorch-$frames" $((20 + 2 * frames)) "$python" benches/pytorch_reference.py --reference "$reference" \
      --config $config --size $size --frames "$frames" --runs $py_runs --device $py_device $f16
  else
    skip "pytorch-$frames" "no PyTorch with diffusers 0.11 and einops, or no reference checkout at $reference"
  fi
done

# ---- 4. the attention kernels beside scaled_dot_product_attention ----------------------------
have_torch=0
"$python" -c 'import torch' >/dev/null 2>&1 && have_torch=1
for shape in $attention_shapes; do
  tokens=${shape%%:*} head_dim=${shape##*:}
  stage "attention-$tokens" 40 "$tav" bench --kernel attention --tokens "$tokens" --heads $heads \
    --head-dim "$head_dim" --frames $attention_frames --runs $py_runs $f16
  if [ $have_torch = 1 ]; then
    stage "sdpa-$tokens" 30 "$python" benches/pytorch_reference.py --steps attention --tokens "$tokens" \
      --heads $heads --head-dim "$head_dim" --frames $attention_frames --runs $py_runs --device $py_device $f16
  else
    skip "sdpa-$tokens" "no PyTorch"
  fi
done

# ---- 5. a whole run on random weights, peak memory against the plan --------------------------
model=$work/model
if stage write-model 90 "$tav" bench --config $config --write-model "$model" $f16; then
  frames=${run_args[1]}
  stage run-plan 30 "$tav" plan --model "$model" --frames "$frames" --width $size --height $size $f16 --json
  sampler=""
  if command -v nvidia-smi >/dev/null 2>&1; then
    # The device's memory in use, every half second, while the run lasts.
    (while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.5; done) \
      >"$work/memory" 2>/dev/null &
    sampler=$!
  fi
  stage run 240 "$tav" run benches/gpu/car-turn.toml --model "$model" --video "$video" \
    "${run_args[@]}" --out "$work/run" --json
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null
    peak=$(sort -n "$work/memory" | tail -n 1)
    emit "{\"stage\":\"run-memory\",\"peak_mib_nvidia_smi\":${peak:-null}}"
  fi
  ls "$work/run" >>"$text" 2>&1
  gif=$(ls "$work/run"/*.gif 2>/dev/null | head -n 1)
  [ -n "$gif" ] && cp "$gif" "$out/edit.gif"
fi

total=$(($(date +%s) - started))
emit "{\"stage\":\"end\",\"seconds\":$total,\"failed_stages\":$failed}"
say "done in $total s, $failed stage(s) failed; $log"
[ $failed = 0 ]
