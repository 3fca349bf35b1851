#!/usr/bin/env bash
# Quality benchmark of a model on held-out synthetic data, two sets, each evaluated on its own:
#  1. MNI-template brains (napari_uad.synth; seeds 900000+; the bundled model's first training used 0..239 and
#     calibration 100000+): 18 scans at 1 mm and 4 with 3 mm slices, about a third normal, up to two toy
#     anomalies each, all contrasts -> REPORT_DIR/
#  2. whole heads with skull from the held-out label maps (napari_uad.synth_labels; the last 4 maps, which
#     training never sees; seeds 910000+, calibration used 100000+): 12 heads, a third normal, one disease-like
#     lesion each (tumour, MS, infarct, haemorrhage), clinical contrasts (T1, T2, FLAIR, PD in turn; the fully
#     random contrast is a training augmentation, not a scan), scored like clinical scans (brain extraction)
#     -> REPORT_DIR/label-heads/ (skipped where ../shared is absent)
# Default maps (the gradient maps have their own experiment: benchmarks/gradient_maps.py).
# Usage: bash benchmarks/quality.sh [MODEL] [REPORT_DIR] [WORK_DIR] [LABEL_MAPS_DIR]
set -euo pipefail
MODEL=${1:-cevae-brain-mr-heads}
REPORT=${2:-docs/results}
WORK=${3:-runs/quality}
MAPS_DIR=${4:-../shared/data/synthseg_label_maps}
napari-uad synth --out "$WORK/heldout-1mm" --n 18 --normal-fraction 0.33 --lesions 2 --seed 900000
napari-uad synth --out "$WORK/heldout-3mm" --n 4 --normal-fraction 0.25 --lesions 2 --slice-thickness 3 --seed 900100
mkdir -p "$WORK/gt"
cp "$WORK"/heldout-1mm/masks/*.nii.gz "$WORK"/heldout-3mm/masks/*.nii.gz "$WORK/gt/"
napari-uad score "$WORK"/heldout-1mm/scans/*.nii.gz "$WORK"/heldout-3mm/scans/*.nii.gz --out "$WORK/pred" \
  --model "$MODEL" --quiet
napari-uad evaluate --pred "$WORK/pred" --gt "$WORK/gt" --out "$REPORT"
if [ -d "$MAPS_DIR" ]; then
  napari-uad synth --label-maps "$MAPS_DIR" --val-maps 4 --contrast clinical --out "$WORK/heads" --n 12 \
    --normal-fraction 0.33 --seed 910000
  napari-uad score "$WORK"/heads/scans/*.nii.gz --out "$WORK/heads-pred" --model "$MODEL" --quiet
  napari-uad evaluate --pred "$WORK/heads-pred" --gt "$WORK/heads/masks" --out "$REPORT/label-heads"
else
  echo "$MAPS_DIR: not found; label-map heads skipped"
fi
