#!/usr/bin/env bash
# Latency of one recommendation: the torch-free runtime (ONNX Runtime fp32 and int8 candidate-scorer graph, and the
# same bundle's expanded-KV decoder path) against PyTorch eager (naive, with the same prefix sharing, and running the
# scorer graph's own module) and optimum's ORTModelForCausalLM (per candidate), one run, one intra-op thread each,
# plus the FLOP floor and the ranking agreement with PyTorch on the test split.
# Uses the recommender report's full synthetic model (run benchmarks/recommender_report.sh first).
# Writes benchmarks/results/latency/{report.json,report.md,*.png}.
set -euo pipefail
cd "$(dirname "$0")/.."
CLI=${CLI:-.venv/bin/mmsrarec-edge}
W=${WORK:-work/recommender}/synthetic
SUMM=${SUMM:-work/summarizer/synthetic/model}
[ -d "$SUMM/rl" ] || SUMM="$W/summarizer"
B="$W/bundles/cpu-fp32-int8"
# a bundle exported before the candidate-scorer graph existed would measure the old path: export again
[ -f "$B/manifest.json" ] && ! grep -q '"recommender.scorer"' "$B/manifest.json" && rm -rf "$B"
[ -f "$B/manifest.json" ] || $CLI export --profile cpu-fp32-int8 --summarizer "$SUMM" \
    --recommender "$W/rec_full" --keywords "$W/kw_rl.parquet" --dataset "$W/data" --out "$B"
$CLI bench "$B" --recommender "$W/rec_full" --protocol "$W/protocol" --out benchmarks/results/latency \
    --candidate-counts "${CANDIDATES:-1,5,10,20,50,100}" --history-lens "${HISTORIES:-1,3,5}" --repeats "${REPEATS:-15}" \
    --agreement-cases "${AGREEMENT_CASES:-984}"
