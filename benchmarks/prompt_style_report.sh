#!/usr/bin/env bash
# The edge-cost prompt (issue 15 item 6): the default recommender trained with the compact prompt (the question stated
# once in the shared prefix; per candidate only its title, keywords, rank hint and " ?") against the same recommender
# trained with the verbose prompt (the default: " . sequential rank : R . will the user choose it ? answer :" per
# candidate), on the same keyword store, SASRec and protocol, each with seeds $SEEDS, evaluated on the test split with
# popularity and SASRec beside.
# Writes benchmarks/results/recommender/prompt_style/<dataset>/report.{json,md,png}, then
# benchmarks/results/recommender/prompt_style/prompt_cost.{json,md} (suffix tokens and FLOPs saved per
# recommendation at the ladder's sizes, benchmarks/prompt_cost.py).
# Shares work/recommender/<dataset>/ (data, protocol, SASRec, summarizer, keywords) with recommender_report.sh.
# Usage: bash benchmarks/prompt_style_report.sh   (ONLY=synthetic|ml100k_mm: one dataset; SEEDS="0 1")
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/mmsrarec-edge}
PY=${PY:-.venv/bin/python}
WORK=${WORK:-work/recommender}
ML100K=${ML100K:-../shared/data/ml100k_mm}
ONLY=${ONLY:-}
SEEDS=${SEEDS:-0 1}  # training seeds per prompt style: the default recommender's runs differ by seed (NOTES.md)
OUT=benchmarks/results/recommender/prompt_style
export MMSRAREC_QUIET=${MMSRAREC_QUIET:-1}
mkdir -p "$WORK" "$OUT"
for style in compact verbose; do printf '[recommender.prompt]\nstyle = "%s"\n' "$style" > "$WORK/$style-prompt.toml"; done

run() {  # name dataset_dir summarizer_args
  local name=$1 ds=$2 w="$WORK/$1"
  [ -f "$w/protocol/protocol.json" ] || $CLI data protocol "$ds" --out "$w/protocol"
  [ -f "$w/sasrec/config.json" ] || $CLI train sasrec "$w/protocol" --out "$w/sasrec"
  local summ="$w/summarizer"
  [ -d "$summ/rl" ] || $CLI train summarizer "$ds" --out "$summ" $3
  [ -f "$w/kw_rl.parquet" ] || $CLI summarize "$ds" --model "$summ" --stage rl --out "$w/kw_rl.parquet"
  local common=(--dataset "$ds" --protocol "$w/protocol" --sasrec "$w/sasrec" --keywords "$w/kw_rl.parquet")
  local rows=() seed sfx
  for seed in $SEEDS; do
    sfx=$([ "$seed" = 0 ] && echo "" || echo "_seed$seed")
    for style in compact verbose; do
      [ -f "$w/rec_$style$sfx/recommender.json" ] || $CLI train recommender "${common[@]}" --seed "$seed" \
          --config "$WORK/$style-prompt.toml" --out "$w/rec_$style$sfx"
      rows+=(--recommender "$style prompt, seed $seed=$w/rec_$style$sfx")
    done
  done
  $CLI evaluate "$w/protocol" --sasrec "$w/sasrec" "${rows[@]}" \
      --out "$OUT/$name" --title "MMSRARec-edge on $name (test split): compact vs verbose prompt"
}

# shellcheck source=benchmarks/report_datasets.sh
. benchmarks/report_datasets.sh
each_dataset run
$PY benchmarks/prompt_cost.py --work "$WORK" --out "$OUT"
