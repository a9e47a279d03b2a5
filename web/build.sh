#!/usr/bin/env bash
# Builds the npm-style package web/pkg/: the engine compiled to wasm (profile wasm-release: optimised for size), its
# wasm-bindgen glue, and the documented API (js/tav.js, js/tav.d.ts, package.json).
# Needs: rustup target wasm32-unknown-unknown, and wasm-bindgen-cli of exactly the version
# of the wasm-bindgen crate in Cargo.lock (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(awk '/^name = "wasm-bindgen"$/ {getline; gsub(/[^0-9.]/, ""); print; exit}' Cargo.lock)
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
if ! wasm-bindgen --version 2>/dev/null | grep -q " $version\$"; then
  # Not --locked: one of the CLI's locked dependencies is not in the registry here.
  # At opt-level 1: it builds in far less of CI's time and still runs in seconds.
  # --force: cargo may record it as installed when the binary is gone.
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 cargo install --force wasm-bindgen-cli --version "=$version"
fi

cargo build --locked -p tav-web --target wasm32-unknown-unknown --profile wasm-release
rm -rf web/pkg
wasm-bindgen --target web --out-dir web/pkg target/wasm32-unknown-unknown/wasm-release/tav_web.wasm
cp web/js/tav.js web/js/tav.d.ts web/js/package.json web/pkg/
echo "web/pkg: $(du -b web/pkg/tav_web_bg.wasm | cut -f1) bytes of wasm"
