#!/usr/bin/env bash
# SASRec vs popularity under the paper's protocol, on the synthetic catalog and (when present) ml100k_mm.
# Writes benchmarks/results/baselines/<dataset>/{report.json,report.md,report.png}. Usage: bash benchmarks/baselines.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/mmsrarec-edge}
WORK=${WORK:-work/baselines}
ML100K=${ML100K:-../shared/data/ml100k_mm}
mkdir -p "$WORK"

run() {  # name dataset_dir
  local name=$1 ds=$2
  $CLI data protocol "$ds" --out "$WORK/$name/protocol"
  $CLI train sasrec "$WORK/$name/protocol" --out "$WORK/$name/sasrec"
  $CLI evaluate "$WORK/$name/protocol" --sasrec "$WORK/$name/sasrec" \
      --out "benchmarks/results/baselines/$name" --title "Baselines on $name (test split)"
}

$CLI data synth --out "$WORK/synthetic/data"
run synthetic "$WORK/synthetic/data"
if [ -f "$ML100K/interactions.csv" ]; then
  $CLI data import "$ML100K" --out "$WORK/ml100k_mm/data"
  run ml100k_mm "$WORK/ml100k_mm/data"
else
  echo "skipping ml100k_mm: not found at $ML100K (its licence forbids shipping it; see README)"
fi
