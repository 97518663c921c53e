#!/usr/bin/env bash
# The edge-cost prompt (issue 15 item 6): the default recommender trained with the compact prompt (the question stated
# once in the shared prefix; per candidate only its title, keywords, rank hint and " ?") against the same recommender
# trained with the verbose prompt (" . sequential rank : R . will the user choose it ? answer :" per candidate), on the
# same keyword store, SASRec and protocol, evaluated on the test split with popularity and SASRec beside.
# Writes benchmarks/results/recommender/prompt_style/<dataset>/report.{json,md,png}, then
# benchmarks/results/recommender/prompt_style/prompt_cost.{json,md} (suffix tokens and FLOPs saved per
# recommendation at the ladder's sizes, benchmarks/prompt_cost.py).
# Shares work/recommender/<dataset>/ (data, protocol, SASRec, summarizer, keywords) with recommender_report.sh.
# Usage: bash benchmarks/prompt_style_report.sh   (ONLY=synthetic|ml100k_mm: one dataset)
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/mmsrarec-edge}
PY=${PY:-.venv/bin/python}
WORK=${WORK:-work/recommender}
ML100K=${ML100K:-../shared/data/ml100k_mm}
ONLY=${ONLY:-}
OUT=benchmarks/results/recommender/prompt_style
export MMSRAREC_QUIET=${MMSRAREC_QUIET:-1}
mkdir -p "$WORK" "$OUT"
VERBOSE_TOML="$WORK/verbose-prompt.toml"
printf '[recommender.prompt]\nstyle = "verbose"\n' > "$VERBOSE_TOML"

run() {  # name dataset_dir summarizer_args
  local name=$1 ds=$2 w="$WORK/$1"
  [ -f "$w/protocol/protocol.json" ] || $CLI data protocol "$ds" --out "$w/protocol"
  [ -f "$w/sasrec/config.json" ] || $CLI train sasrec "$w/protocol" --out "$w/sasrec"
  local summ="$w/summarizer"
  [ -d "$summ/rl" ] || $CLI train summarizer "$ds" --out "$summ" $3
  [ -f "$w/kw_rl.parquet" ] || $CLI summarize "$ds" --model "$summ" --stage rl --out "$w/kw_rl.parquet"
  local common=(--dataset "$ds" --protocol "$w/protocol" --sasrec "$w/sasrec" --keywords "$w/kw_rl.parquet")
  [ -f "$w/rec_full/recommender.json" ] || $CLI train recommender "${common[@]}" --out "$w/rec_full"
  [ -f "$w/rec_full_verbose/recommender.json" ] || \
    $CLI train recommender "${common[@]}" --config "$VERBOSE_TOML" --out "$w/rec_full_verbose"
  $CLI evaluate "$w/protocol" --sasrec "$w/sasrec" \
      --recommender "compact prompt (default)=$w/rec_full" \
      --recommender "verbose prompt=$w/rec_full_verbose" \
      --out "$OUT/$name" --title "MMSRARec-edge on $name (test split): compact vs verbose prompt"
}

if [ "$ONLY" != ml100k_mm ]; then
  [ -f "$WORK/synthetic/data/dataset.json" ] || $CLI data synth --out "$WORK/synthetic/data"
  run synthetic "$WORK/synthetic/data" ""
fi
if [ "$ONLY" = synthetic ]; then
  :
elif [ -f "$ML100K/interactions.csv" ]; then
  [ -f "$WORK/ml100k_mm/data/dataset.json" ] || $CLI data import "$ML100K" --out "$WORK/ml100k_mm/data"
  run ml100k_mm "$WORK/ml100k_mm/data" "--max-train-items 500 --recon-weight 0.01"
else
  echo "skipping ml100k_mm: not found at $ML100K (its licence forbids shipping it; see README)"
fi
$PY benchmarks/prompt_cost.py --work "$WORK" --out "$OUT"
