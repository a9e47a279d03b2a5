#!/usr/bin/env bash
# The browser tests: builds the wasm package (release), packs the golden tiny checkpoint with
# `tav pack-web`, serves the package, the model and the goldens over loopback HTTP, and drives
# headless Chromium (WebGPU; SwiftShader without a GPU) through
#   gif.test.mjs     the page's GIF decoder against Pillow's decoding (node alone);
#   engine.test.mjs  the engine against the reference (golden draws), and the cache on reload;
#   page.test.mjs    the demo page as a person uses it, served by `tav demo-web` (the README's
#                    command): presets from the toy model's manifest, the example clip, a run
#                    to the end, each edit checked from its pixels, screenshots.
# Needs chromium (CHROMIUM=path to override) and node/npm.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
golden="${TAV_GOLDEN:-$root/../shared/golden/tiny-a}"
port="${TAV_PORT:-8123}"

bash web/build.sh
node tests/browser/gif.test.mjs
site=$(mktemp -d /tmp/tav-site.XXXXXX)
cp -r web/pkg "$site/pkg"
# Small shards, so that streaming (one shard of uploads in host memory at a time) shows even
# on a tiny model.
# The workspace's own `tav` (built by the README's test command: `cargo run -p tav-native`
# would resolve other features and build every dependency a second time).
cargo build --workspace --locked --no-default-features -q --bins
"$root/target/debug/tav" pack-web "$golden/model" "$site/model" \
  --temporal "$golden/temporal_init.safetensors" --shard-mib 1
# A model whose tensors (4 GiB of f16 each) are over every adapter's binding limit.
mkdir -p "$site/oversized"
sed -e 's/"bytes": *[0-9]*/"bytes": 4294967296/g' "$site/model/manifest.json" > "$site/oversized/manifest.json"
mkdir -p "$site/golden"
cp "$golden/cases.json" "$golden/cases.safetensors" "$site/golden/"
cp tests/browser/engine.html "$site/"
# The native run of the same packed model (its tuned weights and edits), which the browser
# must reproduce. CI's test run
# already wrote it (TAV_WEB_REFERENCE names where); otherwise it runs here. (--workspace:
# the same feature set as the README's test command, so nothing is rebuilt.)
if [ -n "${TAV_WEB_REFERENCE:-}" ] && [ -f "$TAV_WEB_REFERENCE/edit0.f32" ] &&
  [ -f "$TAV_WEB_REFERENCE/tuned.safetensors" ] &&
  [ "$(cat "$TAV_WEB_REFERENCE/golden.txt" 2>/dev/null)" = "$(realpath "$golden")" ]; then
  mkdir -p "$site/native"
  cp "$TAV_WEB_REFERENCE"/edit*.f32 "$TAV_WEB_REFERENCE/tuned.safetensors" "$site/native/"
else
  TAV_GOLDEN_DIRS="$golden" TAV_WEB_REFERENCE_OUT="$site/native" \
    cargo test --workspace --locked --no-default-features -q --test stream -- \
      streamed_f16_model_runs_the_golden_job
fi

(cd tests/browser && npm ci --no-audit --no-fund --silent)
node tests/browser/serve.mjs "$site" "$port" > /tmp/tav-serve.log 2>&1 &
server=$!
# The README's demo command, as a newcomer runs it (the package was just built, so it is not
# stale; the toy model is packed if its pack is missing or stale).
"$root/target/debug/tav" demo-web --port $((port + 1)) > /tmp/tav-demo-web.log 2>&1 &
demo=$!
trap 'kill $server $demo 2>/dev/null || true' EXIT
for _ in $(seq 50); do grep -q listening /tmp/tav-serve.log && break; sleep 0.2; done
for _ in $(seq 300); do
  grep -q 'open http' /tmp/tav-demo-web.log && break
  kill -0 $demo 2>/dev/null || break
  sleep 0.2
done
cat /tmp/tav-demo-web.log
if ! kill -0 $demo 2>/dev/null || ! grep -q 'open http' /tmp/tav-demo-web.log; then
  echo "tav demo-web did not start serving (its output above)" >&2
  exit 1
fi

echo "wasm: $(du -b web/pkg/tav_web_bg.wasm | cut -f1) bytes; site: $site"
TAV_SITE_URL="http://127.0.0.1:$port/" node tests/browser/engine.test.mjs
# 10 tuning steps and 5 DDIM steps (the presets are 300 and 25): SwiftShader takes about 15 s a
# UNet pass of the toy model, so this run takes about 7½ minutes. Tuned, as the demo always
# tunes: the toy model's edits barely tuned (1 step) are not what the page makes, and are not
# all clean (docs/toy-world.md, "The outcome: stages 8 and 9"); the presets' own
# edits are checked natively, on the main command (job.test.mjs in tests/all.sh).
TAV_WWW_URL="http://127.0.0.1:$((port + 1))/" TAV_VIDEO="$root/../shared/videos/car-turn.mp4" \
  TAV_SD_MODEL_URL="http://127.0.0.1:$port/model/" TAV_TUNE_STEPS=10 TAV_DDIM_STEPS=5 \
  node tests/browser/page.test.mjs
