#!/usr/bin/env bash
# Prepares the GPU check (benches/gpu/run.sh) on the CPU machine: everything the GPU machine
# lacks goes into benches/gpu/carry/ (ignored by git), which travels with the repository.
#
#   bash benches/gpu/prepare.sh PATH/TO/Tune-A-Video
#
# --golden also packs the golden sets and the golden test (they do not fit today; see below).
# --tav BINARY takes a tav already built for x86-64 Linux instead of building one.
# PATH/TO/Tune-A-Video is a checkout of showlab/Tune-A-Video (fetch it yourself; it is never
# committed here): its tuneavideo/ package is what benches/pytorch_reference.py times.
# It builds and strips a release `tav` (compressed with xz), downloads the Vulkan loader's
# Debian packages and the Python wheels the reference needs, copies the reference's package
# and the car-turn clip, and checks that the repository plus carry/ stay within the 64 MiB
# that travel to the GPU machine. Then, on the device: `bash benches/gpu/run.sh` with
# `benches/gpu/carry` carried (docs/testing.md, "The GPU check").
set -euo pipefail

golden=0 prebuilt=""
while [ $# -gt 1 ]; do
  case "$1" in
    --golden) golden=1; shift ;;
    --tav) prebuilt=$2; shift 2 ;;
    *) break ;;
  esac
done
if [ $# -ne 1 ] || [ ! -d "$1/tuneavideo" ]; then
  echo "usage: bash benches/gpu/prepare.sh [--golden] PATH/TO/Tune-A-Video (a checkout with tuneavideo/)" >&2
  exit 2
fi
reference=$(cd "$1" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
carry=benches/gpu/carry
limit=$((64 * 1024 * 1024))
rm -rf "$carry"
mkdir -p "$carry/gl" "$carry/wheels" "$carry/Tune-A-Video"

step() { echo "== $*" >&2; }

step "tav: release build, stripped, xz-compressed (the GPU machine has no cargo)"
if [ -n "$prebuilt" ]; then
  strip -o "$carry/tav" "$prebuilt"
else
  cargo build --release --locked -p tav-native
  strip -o "$carry/tav" target/release/tav
fi
xz -9e -T0 -f "$carry/tav"
git rev-parse HEAD >"$carry/commit"

step "Vulkan loader packages (amd64), unpacked by run.sh"
lists=$(mktemp -d)
apt_options=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$lists")
mkdir -p "$lists/partial"
apt-get "${apt_options[@]}" update -qq
(cd "$carry/gl" && apt-get "${apt_options[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
rm -rf "$lists"

step "Python wheels for CPython 3.12: diffusers 0.11 (the reference's) and what the image lacks"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$carry/wheels" diffusers==0.11.1 huggingface_hub==0.25.2 importlib_metadata==8.5.0

step "the reference's tuneavideo/ package (from $reference) and the car-turn clip"
cp -r "$reference/tuneavideo" "$carry/Tune-A-Video/"
find "$carry/Tune-A-Video" -name '__pycache__' -prune -exec rm -rf {} +
cp "$root/../shared/videos/car-turn.mp4" "$carry/"

if [ $golden = 1 ]; then
  # The golden sets and the golden test's binary. Today they do not fit: tiny-a is 37 MB and
  # the repository 33 MB (docs/testing.md); the check below says by how much.
  step "the golden sets and tests/golden.rs's binary (release, stripped, xz)"
  binary=$(cargo test --release --locked -p tav-tests --test golden --no-run --message-format=json \
    | grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
  strip -o "$carry/golden" "$binary"
  xz -9e -T0 -f "$carry/golden"
  cp -r "$root/../shared/golden" "$carry/golden"
fi

# What travels: tracked files, untracked files git does not ignore, and carry/.
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -n 1 | cut -f1)
extra=$(du -sb "$carry" | cut -f1)
total=$((tree + extra))
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
echo "repository $(mib "$tree") + carry $(mib "$extra") = $(mib "$total") of $(mib "$limit")"
du -sh "$carry"/* >&2
if [ "$total" -gt "$limit" ]; then
  echo "over the 64 MiB that travel: make carry/ smaller" >&2
  exit 1
fi
echo "ready: on the GPU machine run \`bash benches/gpu/run.sh\` with benches/gpu/carry carried"
