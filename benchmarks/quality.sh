#!/usr/bin/env bash
# Quality benchmark of a model on held-out synthetic brains (seeds 900000+; the bundled model trained on 0..239 and
# calibration 100000+): 18 scans at 1 mm and 4 with 3 mm slices, about a third normal, up to two toy
# anomalies each, all contrasts. Writes the evaluation report (docs/results by default).
# Usage: bash benchmarks/quality.sh [MODEL] [REPORT_DIR] [WORK_DIR]
set -euo pipefail
MODEL=${1:-cevae-brain-mr}
REPORT=${2:-docs/results}
WORK=${3:-runs/quality}
napari-uad synth --out "$WORK/heldout-1mm" --n 18 --normal-fraction 0.33 --lesions 2 --seed 900000
napari-uad synth --out "$WORK/heldout-3mm" --n 4 --normal-fraction 0.25 --lesions 2 --slice-thickness 3 --seed 900100
mkdir -p "$WORK/gt"
cp "$WORK"/heldout-1mm/masks/*.nii.gz "$WORK"/heldout-3mm/masks/*.nii.gz "$WORK/gt/"
napari-uad score "$WORK"/heldout-1mm/scans/*.nii.gz "$WORK"/heldout-3mm/scans/*.nii.gz --out "$WORK/pred" \
  --model "$MODEL" --maps residual,U,E,nll,tissue,kl_grad,elbo_grad,combi --quiet
napari-uad evaluate --pred "$WORK/pred" --gt "$WORK/gt" --out "$REPORT"
