#!/usr/bin/env bash
# One lent-GPU session, as one time-boxed command (the device tool lends ~15 minutes, start included):
#  1. GPU benchmarks of issue 14: one 1 mm brain end to end (bench_score.py) and a cohort with one GPU worker
#     against `score` in one process (bench_cohort.py);
#  2. training of cevae-brain-mr-heads continued on the GPU (issue 13): benchmarks/train_heads_model.sh's training
#     (heads from label maps 01-16 in one process per core, validation heads from the held-out maps 17-20) without
#     its calibration, until the time left runs out (the best weights are written at each improvement, so a hard
#     stop keeps them).
# Needs .dev/ from benchmarks/gpu_kit.sh (carried: `run(carry=[".dev"])`). Everything lands in OUT_DIR.
# deepbet (brain extraction, 17 MB of weights) does not fit in the same 64 MiB call: a first, short call on the
# same warm machine (the next call must follow within its 30 s) installs .dev1/ (the deepbet,
# connected-components-3d, fill_voids and fastremap wheels) outside the repository, where it survives between calls:
#   pip install -q --no-deps --no-compile --target /tmp/napari-uad-gpu/site .dev1/*.whl
# (2026-12-04: installed into the repository's ignored .devsite/ instead, it was gone by the next call.)
# Without it the benchmarks are skipped and the training still runs (its heads carry their own brain masks).
# Usage: bash benchmarks/gpu_session.sh OUT_DIR [BUDGET_SECONDS=520] [N_HEADS=128] [DEVICE=cuda]
#   (BENCH_N, default 8 volumes, BENCH_REPEATS, default 3, BENCH_COHORT_SECONDS, default 240, and
#   BENCH_COHORT_ARGS, e.g. --no-score where the baseline was measured before, size the benchmarks; the fit's --max-minutes
#   leaves ~0.9 s per head for making the heads, and `timeout` stops the training at the budget regardless)
# Then, on the CPU: copy OUT_DIR/model.safetensors + card.json into a model directory and calibrate it.
set -uo pipefail
T0=$(date +%s)
OUT=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR [BUDGET_SECONDS] [N_HEADS] [DEVICE]}
BUDGET=${2:-520}
HEADS=${3:-128}
DEVICE=${4:-cuda}
WORK=${GPU_SESSION_WORK:-/tmp/napari-uad-gpu}
mkdir -p "$OUT" "$WORK/site" "$WORK/maps"
exec > >(tee -a "$OUT/session.log") 2>&1
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
stamp() { echo "== $(date -u +%H:%M:%S) +$(( $(date +%s) - T0 ))s: $*"; }

stamp "unpacking .dev"
for kit in site sitk maps; do
  dest="$WORK/site"; [ "$kit" = maps ] && dest="$WORK/maps"
  tar -C "$dest" -xJf ".dev/$kit.tar.xz" || { echo "cannot unpack .dev/$kit.tar.xz"; exit 2; }
done
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
$PY -c "import torch, SimpleITK, nibabel, nilearn, distributed, napari_uad; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'cores', __import__('os').cpu_count())" || exit 2

if $PY -c "import deepbet"; then
  stamp "bench_score ($DEVICE)"
  timeout 100 $PY benchmarks/bench_score.py --device "$DEVICE" --repeats "${BENCH_REPEATS:-3}" | tee "$OUT/bench_score.json"
  stamp "bench_cohort ($DEVICE, 1 worker)"
  timeout "${BENCH_COHORT_SECONDS:-240}" $PY benchmarks/bench_cohort.py --n "${BENCH_N:-8}" --device "$DEVICE" \
    --workers 1 --work "$WORK/bench_cohort" ${BENCH_COHORT_ARGS:-}
  cp "$WORK/bench_cohort/bench_cohort.json" "$OUT/" 2>/dev/null || echo "bench_cohort did not finish"
else
  stamp "no deepbet (not staged in $WORK/site): benchmarks skipped"
fi

stamp "training on $HEADS heads, $(left) s left"
TRAIN_LIMIT=$(( $(left) - 15 ))
if [ "$TRAIN_LIMIT" -gt 60 ]; then
  PYTHON="$PY" NAPARI_UAD="$PY -m napari_uad.cli" INIT_FROM=cevae-brain-mr-heads N_HEADS="$HEADS" CALIBRATE=0 \
    timeout "$TRAIN_LIMIT" bash benchmarks/train_heads_model.sh "$WORK/train" "$WORK/maps" \
    --workers "$(nproc)" --device "$DEVICE" \
    --max-minutes "$(awk -v t="$TRAIN_LIMIT" -v n="$HEADS" 'BEGIN { print (t - 30 - 0.9 * n) / 60 }')" 2>&1 | tee "$OUT/train.log"
  cp "$WORK/train/model.safetensors" "$WORK/train/card.json" "$OUT/" 2>/dev/null || echo "no model written"
else
  echo "no time left for training"
fi
stamp "done"
