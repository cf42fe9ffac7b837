#!/usr/bin/env bash
# Wall time of AISimulate against servesim on the Mooncake-derived traces, alternating one run of each per
# round on one host, and the ratio of their medians.
#
# usage: tools/aisim_side_by_side.sh PEER_DIR WORKDIR SERVESIM_BIN [ROUNDS] [CASES]
#   PEER_DIR  the folder holding AISimulate's run.sh, make_mc.py, aisim_mc.yaml and servesim_mc.toml
#             (the team's shared peers/aisimulate); run.sh installs AISimulate into WORKDIR on first use
#             and builds WORKDIR/traces/mc10k.jsonl and mc100k.jsonl.
#   ROUNDS    rounds per case (default 3)
#   CASES     "TRACE:REPLICAS ..." (default "mc10k:1 mc10k:8 mc100k:8")
# Prints a markdown table: per case, each simulator's wall seconds per round, their medians and the ratio.
set -euo pipefail
PEER=$(cd "${1:?peer dir}" && pwd); W=$(mkdir -p "${2:?workdir}" && cd "$2" && pwd); BIN=$(realpath "${3:?servesim binary}")
ROUNDS=${4:-3}; CASES=${5:-"mc10k:1 mc10k:8 mc100k:8"}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| trace | replicas | AISimulate wall s (rounds) | servesim wall s (rounds) | AISimulate median | servesim median | ratio |"
echo "|---|---|---|---|---|---|---|"
for c in $CASES; do
  T=${c%%:*}; R=${c##*:}; A=(); S=()
  for _ in $(seq "$ROUNDS"); do
    a=$(bash "$PEER/run.sh" "$W" "$T" "$R" 2>&1 | sed -n 's/^wall_s \([0-9.]*\).*/\1/p' | tail -1)
    s=$( { /usr/bin/time -f "wall_s %e" "$BIN" run -q --config "$PEER/servesim_mc.toml" \
          --set "workload.trace.path=\"$W/traces/$T.jsonl\"" --set "cluster.replicas=$R" \
          --set workload.duration_s=1e9 --out "$W/runs/servesim-$T-r$R" > /dev/null; } 2>&1 \
          | sed -n 's/^wall_s \([0-9.]*\).*/\1/p' | tail -1)
    A+=("$a"); S+=("$s")
  done
  ma=$(median "${A[@]}"); ms=$(median "${S[@]}")
  echo "| $T | $R | ${A[*]} | ${S[*]} | $ma | $ms | $(awk -v a="$ma" -v s="$ms" 'BEGIN {printf "%.0fx", a / s}') |"
done
