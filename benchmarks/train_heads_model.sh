#!/usr/bin/env bash
# Train (or continue) the real-anatomy model cevae-brain-mr-heads (docs/MODELS.md) and calibrate it, in one job:
#  1. fine-tune from the bundled cevae-brain-mr on synthetic heads from the first label maps (the last 4 held
#     out), or continue OUT_DIR/checkpoint where it exists (--resume is added by itself);
#  2. calibrate on 16 healthy + 16 lesion heads from the held-out maps, clinical contrasts, with the normal
#     variants (periventricular rim, choroid plexus), as 3.3.0 and 3.4.0; training heads get the variants too;
#  3. keep the bundled card's tissue-map settings (scoring.tissue_*), so the maps stay comparable.
# Then: copy OUT_DIR/card.json and model.safetensors into models/cevae-brain-mr-heads (version set), run
# benchmarks/real_scans.py once and benchmarks/quality.sh.
# Usage: bash benchmarks/train_heads_model.sh OUT_DIR [MAPS_DIR] [train options, e.g. --device cuda --max-minutes 15]
# On the lent GPU machine, which cannot see ../shared: copy the label maps into a git-ignored folder of the
# repository (e.g. .labelmaps/), carry it, and pass it as MAPS_DIR.
# NAPARI_UAD overrides the command, PYTHON the interpreter; CALIBRATE_ARGS adds calibration options (e.g. "--device cuda"); INIT_FROM
# (default cevae-brain-mr) is the model fine-tuned from, N_HEADS (default 64) the number of heads made, and
# CALIBRATE=0 stops after training and the tissue-settings copy (benchmarks/gpu_session.sh: no time on the GPU).
set -euo pipefail
OUT=${1:?usage: bash benchmarks/train_heads_model.sh OUT_DIR [MAPS_DIR] [train options]}
MAPS=${2:-../shared/data/synthseg_label_maps}
shift $(( $# >= 2 ? 2 : 1 ))
UAD=${NAPARI_UAD:-napari-uad}
if [ -f "$OUT/checkpoint/state.json" ]; then
  START=(--resume)
else
  START=(--init-from "${INIT_FROM:-cevae-brain-mr}")
fi
$UAD train --label-maps "$MAPS" --val-maps 4 "${START[@]}" --out "$OUT" --n-volumes "${N_HEADS:-64}" --val-fraction 0.17 \
  --epochs 1000 --steps-per-epoch 100 --batch-size 64 --learning-rate 1e-4 --patience 20 --lr-patience 4 \
  --calibration-volumes 0 --normal-variants "$@"
${PYTHON:-python} - "$OUT/card.json" <<'EOF'
import json, sys
from napari_uad.model_card import resolve_model
bundled = json.loads((resolve_model("cevae-brain-mr-heads") / "card.json").read_text())
path = sys.argv[1]
card = json.loads(open(path).read())
card["scoring"].update({k: v for k, v in bundled["scoring"].items() if k.startswith("tissue_")})
open(path, "w").write(json.dumps(card, indent=2) + "\n")
EOF
[ "${CALIBRATE:-1}" = 0 ] && exit 0
$UAD calibrate --model "$OUT" --synthetic 16 --label-maps "$MAPS" --normal-variants ${CALIBRATE_ARGS:-}
