#!/usr/bin/env bash
# Train the bundled brain-MR model (docs/MODELS.md), or continue a run with --resume, then calibrate it on
# 16 healthy + 16 toy-anomaly synthetic volumes. Extra arguments go to `napari-uad train`
# (e.g. --resume --max-minutes 20 --device cuda). Copy OUT_DIR/card.json and model.safetensors into
# models/cevae-brain-mr afterwards and rerun benchmarks/quality.sh.
# Usage: bash benchmarks/train_bundled_model.sh OUT_DIR [train options]
# NAPARI_UAD overrides the command (e.g. NAPARI_UAD="python3 -m napari_uad.cli" where it is not installed);
# CALIBRATE_ARGS adds options to the calibration (e.g. CALIBRATE_ARGS="--workers 16").
set -euo pipefail
OUT=${1:?usage: bash benchmarks/train_bundled_model.sh OUT_DIR [train options]}
shift
UAD=${NAPARI_UAD:-napari-uad}
$UAD train --synthetic --out "$OUT" --name cevae-brain-mr --n-volumes 240 --epochs 1000 --steps-per-epoch 400 \
  --batch-size 64 --patience 12 --lr-patience 4 --input-size 128 --channels 16,32,64,128,256 --latent 128 \
  --learning-rate 3e-4 --log-var-clamp=-6,3 --beta-nll 0.5 --calibration-volumes 0 "$@"
$UAD calibrate --model "$OUT" --synthetic 16 ${CALIBRATE_ARGS:-}
