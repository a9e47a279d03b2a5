#!/usr/bin/env bash
# Every test of the project, in one command (the README's test command; CI's `.ci/run` installs
# lavapipe, Chromium and node, then runs this):
#   1. cargo's tests: unit, kernels, golden parity, memory, CLI end to end, streamed models…;
#   2. the browser tests (builds the wasm package and wasm-bindgen-cli if missing);
#   3. the main command (`tav run jobs/toy.toml` on the toy world, its edits checked from their
#      pixels) and the GPU check's dry run (benches/gpu/run.sh --dry-run), the benchmark's smoke
#      check.
# Needs a Vulkan driver (lavapipe without a GPU), chromium and node/npm.
set -euo pipefail
cd "$(dirname "$0")/.."

# lavapipe's window-system probe wants a runtime dir; headless machines have none.
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-runtime-$(id -u)}"
mkdir -p -m 700 "$XDG_RUNTIME_DIR"

start=$(date +%s)
# --no-default-features: without burn's autotune (tav-native's default), which benchmarks
# every new matmul and convolution shape on first use: on lavapipe that made the kernel
# tests 5-7x slower. Everything else is the same build users get; run the suites with the
# default features to test autotune too.
# The streamed-model test also writes the native edits the browser must reproduce, so the
# browser tests need not run it again.
reference="$PWD/target/web-reference"
rm -rf "$reference"
TAV_WEB_REFERENCE_OUT="$reference" cargo test --workspace --locked --no-default-features -- --show-output
echo "tests: build and cargo tests took $(( $(date +%s) - start )) s"

browser_start=$(date +%s)
TAV_WEB_REFERENCE="$reference" bash tests/browser/run.sh
echo "tests: browser tests (wasm build included) took $(( $(date +%s) - browser_start )) s"

# The main command: the whole job on the toy world's model and clip, on burn's CPU backend
# (no GPU needed). The workspace's `tav`, already built by the tests (`cargo run -p
# tav-native` would resolve other features and build every dependency again).
cargo build --workspace --locked --no-default-features --bins
toy_start=$(date +%s)
# The job as committed (300 tuning steps, 25 + 25 DDIM steps; under 2 minutes of 2 cores), from
# scratch (an earlier run's checkpoint there would be resumed, skipping the tuning); then its
# three edits checked from their pixels by the demo page test's rules (job.test.mjs: each edit
# did what its prompt says, no flash frame).
rm -rf outputs/toy
target/debug/tav run jobs/toy.toml --device flex --quiet
node tests/browser/job.test.mjs outputs/toy
test -s outputs/toy/grid.gif
echo "tests: the main command took $(( $(date +%s) - toy_start )) s"
# The GPU check's dry run: benches/gpu/run.sh's stages at tiny sizes on lavapipe (adapter probe,
# plan, bench, attention kernels, a whole run on random weights; PyTorch's beside them where
# it is installed), so the one command a GPU machine runs cannot rot. Its bench stage is the
# benchmark's smoke check: one timed run per step, JSON lines with figures.
gpu_start=$(date +%s)
OUT="$PWD/outputs/gpu-check-dry-run" bash benches/gpu/run.sh --dry-run
test "$(grep -c '"median_ms"' outputs/gpu-check-dry-run/gpu.jsonl)" -ge 3
echo "tests: the GPU check's dry run took $(( $(date +%s) - gpu_start )) s"
echo "tests: everything took $(( $(date +%s) - start )) s"
