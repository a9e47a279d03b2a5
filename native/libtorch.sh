#!/usr/bin/env bash
# Builds tav with burn's libtorch backend (`--device torch`: PyTorch's own CPU kernels under
# tav's model and autodiff) against an installed PyTorch, and leaves it at target/debug/tav-torch.
#
#   bash native/libtorch.sh [--python PYTHON]     # PYTHON: one whose `import torch` works
#
# burn 0.22's tch 0.22 was written for libtorch 2.9. A newer PyTorch (2.10+) needs C++20 and
# has dropped six functions tch's generated C++ wrapper still names (align_as, align_tensors,
# cholesky, cholesky_out, qr, qr_out); for those, this script makes a patched copy of the
# registry's torch-sys under target/ (the four linear-algebra ones mapped to their torch.linalg
# equivalents, the two named-tensor ones raising an error: burn calls none of them) and builds
# with it through a command-line `[patch]`, so nothing patched is committed. Cold build: about
# 10 minutes on 2 cores on top of the test command's build (tch's C++ wrapper, and burn again
# with the extra backend).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

python=python3
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    *) echo "unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
version=$("$python" -c 'import torch; print(torch.__version__.split("+")[0])') || {
  echo "$python cannot import torch: install PyTorch (pip install torch) or name another --python" >&2
  exit 2
}
export LIBTORCH_USE_PYTORCH=1
export PATH="$(dirname "$("$python" -c 'import sys; print(sys.executable)')"):$PATH"

patch=()
# The patched build rewrites Cargo.lock's entries for the copies; the committed one comes back.
mkdir -p target
cp Cargo.lock target/Cargo.lock.before-libtorch
trap 'cp target/Cargo.lock.before-libtorch Cargo.lock' EXIT
if [ "$version" != "2.9.0" ]; then
  export LIBTORCH_BYPASS_VERSION_CHECK=1
  registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/torch-sys-0.22.0 2>/dev/null | head -1)
  if [ -z "$registry" ]; then
    cargo fetch --locked >/dev/null
    registry=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/torch-sys-0.22.0 | head -1)
  fi
  patched=target/torch-sys-patched
  if [ ! -f "$patched/.patched-for" ] || [ "$(cat "$patched/.patched-for")" != "$version" ]; then
    rm -rf "$patched"
    mkdir -p "$patched"
    cp -r "$registry"/. "$patched"/
    "$python" - "$patched" <<'EOF'
import sys
root = sys.argv[1]
cpp = f"{root}/libtch/torch_api_generated.cpp"
text = open(cpp).read()
changes = {
    "self->align_as(*other)":
        '(throw std::runtime_error("align_as is not in this libtorch"), torch::Tensor())',
    "torch::align_tensors(of_carray_tensor(tensors_data, tensors_len))":
        '(throw std::runtime_error("align_tensors is not in this libtorch"), std::vector<torch::Tensor>())',
    "torch::cholesky(*self, (bool)upper)": "torch::linalg_cholesky(*self, (bool)upper)",
    "torch::cholesky_out(*out, *self, (bool)upper)": "torch::linalg_cholesky_out(*out, *self, (bool)upper)",
    "torch::qr(*self, (bool)some)": 'torch::linalg_qr(*self, some ? "reduced" : "complete")',
    "torch::qr_out(*Q, *R, *self, (bool)some)": 'torch::linalg_qr_out(*Q, *R, *self, some ? "reduced" : "complete")',
}
for old, new in changes.items():
    if text.count(old) != 1:
        sys.exit(f"torch-sys patch: expected `{old}` once in {cpp}")
    text = text.replace(old, new)
open(cpp, "w").write(text)
build = f"{root}/build.rs"
script = open(build).read()
if script.count('.flag("-std=c++17")') != 1:
    sys.exit(f"torch-sys patch: expected one -std=c++17 in {build}")
open(build, "w").write(script.replace('.flag("-std=c++17")', '.flag("-std=c++20")'))
EOF
    echo "$version" >"$patched/.patched-for"
  fi
  patch=(--config "patch.crates-io.torch-sys.path=\"$patched\"")
  # burn-tch links a CUDA helper whenever libtorch has CUDA, written against 2.9's CUDA API;
  # tav uses libtorch on the CPU only, so this copy always takes burn-tch's CPU branch.
  registry=$(dirname "$registry")/burn-tch-0.22.1
  patched=target/burn-tch-cpu
  if [ ! -f "$patched/.patched" ]; then
    rm -rf "$patched"
    mkdir -p "$patched"
    cp -r "$registry"/. "$patched"/
    "$python" - "$patched/build.rs" <<'EOF'
import re, sys
path = sys.argv[1]
text = open(path).read()
text, n = re.subn(r"let use_(cuda|hip) =\s*si_lib[^;]*;", r"let use_\1 = false;", text)
if n != 2:
    sys.exit(f"burn-tch patch: expected the two GPU checks in {path}, found {n}")
open(path, "w").write(text)
EOF
    touch "$patched/.patched"
  fi
  patch+=(--config "patch.crates-io.burn-tch.path=\"$patched\"")
fi

echo "== building tav with libtorch $version (from $python)" >&2
cargo build --offline "${patch[@]}" --workspace --no-default-features \
  --features tav-native/libtorch --bins
cp target/debug/tav target/debug/tav-torch
# Put the test command's own build back at target/debug/tav (cached: a relink).
cargo build --offline --workspace --no-default-features --bins
echo "target/debug/tav-torch"
