#!/usr/bin/env bash
# MMSRARec-edge vs SASRec and popularity, with the three ablations (w/o retrieval, w/o RL summarization = SFT-only
# keywords, w/o auxiliary tasks), under the paper's protocol on the synthetic catalog and (when present) ml100k_mm.
# Writes benchmarks/results/recommender/<dataset>/{report.json,report.md,report.png} (+ scores.parquet).
# Every model is selected on the validation split only; the test split is scored once, here.
# Usage: bash benchmarks/recommender_report.sh   (REC_ARGS="..." adds options to every `train recommender`)
# The committed reports: SEED1_synthetic=rec_no_retrieval SEED1_ml100k_mm=rec_no_rl bash benchmarks/recommender_report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/mmsrarec-edge}
WORK=${WORK:-work/recommender}
ML100K=${ML100K:-../shared/data/ml100k_mm}
REC_ARGS=${REC_ARGS:-}
ONLY=${ONLY:-}  # synthetic or ml100k_mm: one dataset (two shells can run the two in parallel)
export MMSRAREC_QUIET=${MMSRAREC_QUIET:-1}
mkdir -p "$WORK"

label() {
  case $1 in rec_full) echo "MMSRARec-edge" ;; rec_no_retrieval) echo "w/o retrieval" ;;
    rec_no_rl) echo "w/o RL summarization" ;; rec_no_aux) echo "w/o auxiliary tasks" ;; esac
}

run() {  # name dataset_dir summarizer_args
  local name=$1 ds=$2 w="$WORK/$1"
  [ -f "$w/protocol/protocol.json" ] || $CLI data protocol "$ds" --out "$w/protocol"
  [ -f "$w/sasrec/config.json" ] || $CLI train sasrec "$w/protocol" --out "$w/sasrec"
  # Stage 1: one summarizer run gives both keyword stores (sft/ = the "w/o RL" ablation, rl/ = the full model).
  # The summarizer report's model (benchmarks/summarizer_report.py, same settings) is reused when it exists.
  local summ="$w/summarizer" shared="${SUMM_WORK:-work/summarizer}/$name/model"
  [ -d "$shared/rl" ] && summ="$shared"
  [ -d "$summ/rl" ] || $CLI train summarizer "$ds" --out "$summ" $3
  [ -f "$w/kw_rl.parquet" ] || $CLI summarize "$ds" --model "$summ" --stage rl --out "$w/kw_rl.parquet"
  [ -f "$w/kw_sft.parquet" ] || $CLI summarize "$ds" --model "$summ" --stage sft --out "$w/kw_sft.parquet"
  local common=(--dataset "$ds" --protocol "$w/protocol" --sasrec "$w/sasrec")
  train() {  # out keywords [extra args]
    local out=$1 kw=$2; shift 2
    [ -f "$w/$out/recommender.json" ] || $CLI train recommender "${common[@]}" --keywords "$kw" --out "$w/$out" \
        $REC_ARGS "$@"
  }
  train rec_full "$w/kw_rl.parquet"
  train rec_no_retrieval "$w/kw_rl.parquet" --no-retrieval
  train rec_no_rl "$w/kw_sft.parquet"
  train rec_no_aux "$w/kw_rl.parquet" --no-aux
  # Runs named in SEED1 (per dataset: SEED1_synthetic, SEED1_ml100k_mm) are trained again with --seed 1 and reported
  # beside the first: a run whose validation NDCG@5 stayed at chance had not picked up the rank hint (NOTES.md).
  local extra=() seed1="SEED1_$name" r
  for r in ${!seed1:-}; do
    case $r in
      rec_no_retrieval) train rec_no_retrieval_seed1 "$w/kw_rl.parquet" --no-retrieval --seed 1 ;;
      rec_no_rl) train rec_no_rl_seed1 "$w/kw_sft.parquet" --seed 1 ;;
      rec_no_aux) train rec_no_aux_seed1 "$w/kw_rl.parquet" --no-aux --seed 1 ;;
      rec_full) train rec_full_seed1 "$w/kw_rl.parquet" --seed 1 ;;
    esac
    extra+=(--recommender "$(label "$r") (seed 1)=$w/${r}_seed1")
  done
  $CLI evaluate "$w/protocol" --sasrec "$w/sasrec" \
      --recommender "MMSRARec-edge=$w/rec_full" \
      --recommender "w/o retrieval=$w/rec_no_retrieval" \
      --recommender "w/o RL summarization=$w/rec_no_rl" \
      --recommender "w/o auxiliary tasks=$w/rec_no_aux" "${extra[@]}" \
      --out "benchmarks/results/recommender/$name" --title "MMSRARec-edge on $name (test split)"
}

# shellcheck source=benchmarks/report_datasets.sh
. benchmarks/report_datasets.sh
each_dataset run
