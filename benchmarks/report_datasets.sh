# Sourced by the recommender report scripts: `each_dataset FN` runs `FN name dataset_dir summarizer_args` on the
# synthetic catalog (generated) and, when present, ml100k_mm (imported), honouring ONLY=synthetic|ml100k_mm.
# Needs CLI, WORK, ML100K and ONLY set by the caller.
each_dataset() {
  local fn=$1
  if [ "$ONLY" != ml100k_mm ]; then
    [ -f "$WORK/synthetic/data/dataset.json" ] || $CLI data synth --out "$WORK/synthetic/data"
    "$fn" synthetic "$WORK/synthetic/data" ""
  fi
  if [ "$ONLY" = synthetic ]; then
    :
  elif [ -f "$ML100K/interactions.csv" ]; then
    [ -f "$WORK/ml100k_mm/data/dataset.json" ] || $CLI data import "$ML100K" --out "$WORK/ml100k_mm/data"
    # As in benchmarks/summarizer_report.py: long plot texts, so fewer training items and a smaller R_recon weight.
    "$fn" ml100k_mm "$WORK/ml100k_mm/data" "--max-train-items 500 --recon-weight 0.01"
  else
    echo "skipping ml100k_mm: not found at $ML100K (its licence forbids shipping it; see README)"
  fi
}
