#!/usr/bin/env bash
# tav and the PyTorch reference on the same CPU job, side by side: jobs/toy.toml (the toy
# model and clip, three edits) with `tav run --device flex` (or `--device torch`), then the
# reference's own code (benches/peer_cpu.py) on the same cores with the same thread count, one
# after the other.
#
#   bash benches/peer_cpu.sh --reference PATH/TO/Tune-A-Video [--python PYTHON] [--threads N]
#                            [--steps N] [--device flex|torch] [--repeat N] [--out DIR]
#
# PYTHON needs torch, diffusers==0.11.1, transformers==4.36.2, einops, imageio and safetensors.
# tav is the test command's build (target/debug/tav: our code at opt-level 1, dependencies
# optimised); with --device torch, the same build with libtorch (native/libtorch.sh, linked
# against PYTHON's PyTorch: the reference's own kernels). Threads: RAYON_NUM_THREADS for burn's
# CPU backend, OMP_NUM_THREADS for libtorch (tav's and the reference's), torch.set_num_threads
# for the reference; all pinned to the same cores with taskset. Prints one table.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

reference="" python=python3 threads=2 steps="" device=flex repeat=1 out=outputs/peer-cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --reference) reference=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
if [ -z "$reference" ] || [ ! -d "$reference/tuneavideo" ]; then
  echo "--reference PATH/TO/Tune-A-Video (a checkout with tuneavideo/) is needed" >&2
  exit 2
fi
cores=$(nproc)
if [ "$threads" -gt "$cores" ]; then
  echo "--threads $threads: this machine has $cores cores" >&2
  exit 2
fi
cpus="0-$((threads - 1))"
mkdir -p "$out"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

case "$device" in
  flex)
    # The test command's build (its feature set; autotune changes nothing on burn's CPU backend).
    cargo build --workspace --locked --no-default-features --bins
    tav=target/debug/tav ;;
  torch)
    bash native/libtorch.sh --python "$python" >&2
    tav=target/debug/tav-torch ;;
  *) echo "--device $device: flex or torch" >&2; exit 2 ;;
esac
step_flags=()
[ -n "$steps" ] && step_flags=(--steps "$steps")

# tav, then the reference, --repeat times (alternating, so load from elsewhere on the machine
# falls on both alike); the table gives each figure's median over the rounds.
for round in $(seq 1 "$repeat"); do
  echo "== round $round/$repeat: tav run jobs/toy.toml --device $device, $threads threads on cores $cpus" >&2
  rm -rf "$out/tav"
  tav_started=$(date +%s.%N)
  RAYON_NUM_THREADS=$threads OMP_NUM_THREADS=$threads taskset -c "$cpus" "$tav" run jobs/toy.toml \
    --device "$device" --json "${step_flags[@]}" --out "$out/tav" >"$out/tav-$round.jsonl"
  awk -v a="$tav_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$out/tav-$round.total"

  echo "== round $round/$repeat: the reference, benches/peer_cpu.py, $threads threads on cores $cpus" >&2
  ref_started=$(date +%s.%N)
  OMP_NUM_THREADS=$threads taskset -c "$cpus" "$python" benches/peer_cpu.py --reference "$reference" \
    --threads "$threads" "${step_flags[@]}" --out "$out/reference" >"$out/reference-$round.jsonl"
  awk -v a="$ref_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f\n", b - a }' >"$out/reference-$round.total"
done

# tav's phases from its progress records (seconds since start at each step), the reference's
# from its stage lines.
"$python" - "$out" "$repeat" "$threads" "$device" <<'EOF'
import json, statistics, sys
out, repeat, threads, device = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def tav_round(i):
    phases = {}
    for line in open(f"{out}/tav-{i}.jsonl"):
        r = json.loads(line)
        if r.get("event") == "progress" and "elapsed_s" in r:
            first, last, n = phases.get(r["phase"], (None, None, 0))
            phases[r["phase"]] = (first if first is not None else r["elapsed_s"], r["elapsed_s"], max(n, r["total"]))
    first, last, n = phases["tune"]
    tune = (last - first) * n / max(n - 1, 1)  # first record to last, plus one step's share
    return n, tune, float(open(f"{out}/tav-{i}.total").read())

def ref_round(i):
    ref = {r["stage"]: r for r in map(json.loads, open(f"{out}/reference-{i}.jsonl"))}
    tune = ref["tune"]
    n = tune["steps"]
    # As tav's: from the first step's end to the last's, plus one step's share.
    seconds = tune["seconds_after_first_step"] * n / max(n - 1, 1)
    return seconds, float(open(f"{out}/reference-{i}.total").read())

rounds = range(1, repeat + 1)
tav = [tav_round(i) for i in rounds]
ref = [ref_round(i) for i in rounds]
tune_steps = tav[0][0]
med = statistics.median
tav_tune, tav_total = med(t for _, t, _ in tav), med(t for _, _, t in tav)
ref_tune, ref_total = med(t for t, _ in ref), med(t for _, t in ref)
rows = [
    ("tuning step (s)", tav_tune / tune_steps, ref_tune / tune_steps),
    (f"tuning, {tune_steps} steps (s)", tav_tune, ref_tune),
    ("whole job, process start to exit (s)", tav_total, ref_total),
]
backend = "burn's CPU backend (flex), RAYON_NUM_THREADS" if device == "flex" else "libtorch, OMP_NUM_THREADS"
print(f"threads: {threads} each (tav --device {device}: {backend}; reference: torch.set_num_threads)")
print(f"medians over {repeat} alternating round(s); each round's whole job: "
      f"tav {[t for _, _, t in tav]}, reference {[t for _, t in ref]}")
print("| what | tav | reference | tav / reference |")
print("| --- | --- | --- | --- |")
for name, a, b in rows:
    print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}× |")
print(json.dumps({"bench": "peer_cpu", "device": device, "threads": int(threads), "rounds": repeat,
                  "tune_steps": tune_steps, "tav_step_s": tav_tune / tune_steps,
                  "reference_step_s": ref_tune / tune_steps,
                  "tav_total_s": tav_total, "reference_total_s": ref_total}))
EOF
