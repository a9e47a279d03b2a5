#!/usr/bin/env bash
# The attention kernels, tiled against per-row, at SD v1.5's three attention levels and a
# range of frame counts: one `tav bench --kernel attention` run per tiling and shape, printed
# as a Markdown table (the BENCHMARKS.md tables come from this). Which kernels a shape really
# ran is in the `kernels` column: temporal attention keeps the per-row ones where its tiles
# would be under three quarters full.
#
#   bash benches/attention_tiling.sh [MODE] [TAV] [--device cpu|auto|…] [--f16]
#
# MODE: temporal (default), sparse-causal or both; TAV: the binary (default target/release/tav,
# else target/debug/tav). Shapes: "tokens frames head_dim" in $SHAPES, 8 heads each.
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-temporal}"
tav="${2:-}"
shift $(( $# < 2 ? $# : 2 ))
if [ -z "$tav" ]; then
  tav=target/release/tav
  [ -x "$tav" ] || tav=target/debug/tav
fi
shapes="${SHAPES:-4096 2 40;4096 4 40;4096 8 40;4096 24 40;1024 8 80;1024 16 80;1024 24 80;256 8 160;256 16 160;256 24 160}"
runs="${RUNS:-1}"

echo "| tokens × frames × head | pass | kernels (tiled run) | tiled ms | per-row ms | per-row / tiled |"
echo "| --- | --- | --- | --- | --- | --- |"
IFS=';' read -ra list <<< "$shapes"
for shape in "${list[@]}"; do
  read -r tokens frames head <<< "$shape"
  declare -A ms=() ran=()
  for tiling in tiled rows; do
    while IFS=$'\t' read -r pass kernels median; do
      ms[$tiling.$pass]=$median
      ran[$tiling.$pass]=$kernels
    done < <("$tav" bench --kernel attention --mode "$mode" --tokens "$tokens" --frames "$frames" \
      --heads 8 --head-dim "$head" --runs "$runs" --tiling "$tiling" "$@" |
      python3 -c '
import json, sys
for line in sys.stdin:
    if line.startswith("{"):
        d = json.loads(line)
        print(d["mode"] + " " + d["bench"].split(".")[1], d["kernels"], "%.1f" % d["median_ms"], sep="\t")
')
  done
  for key in "${!ms[@]}"; do
    case $key in tiled.*) pass=${key#tiled.} ;; *) continue ;; esac
    ratio=$(python3 -c "print('%.2f' % (${ms[rows.$pass]} / ${ms[tiled.$pass]}))")
    echo "| $tokens × $frames × $head | $pass | ${ran[tiled.$pass]} | ${ms[tiled.$pass]} | ${ms[rows.$pass]} | $ratio |"
  done | sort -t'|' -k3
  unset ms ran
done
