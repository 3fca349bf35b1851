#!/usr/bin/env bash
# Build .dev/ (git-ignored), what benchmarks/gpu_session.sh needs on the lent GPU machine, whose image has torch,
# numpy, scipy, scikit-image, scikit-learn and pandas but none of the imaging packages, and which cannot see
# ../shared or a package registry. Everything travels in one call under the device tool's 64 MiB limit:
#   .dev/site.tar.xz  nibabel, nilearn (tests and surface data dropped), dask, distributed and their small needs
#   .dev/sitk.tar.xz  SimpleITK (its 53 MB wheel is ~28 MB as xz)
#   .dev/maps.tar.xz  the 20 whole-head label maps, uncompressed .nii (xz compresses label maps ~3x better than gz)
#   .dev1/*.whl       deepbet and its compiled needs (cp312), for a first, short call (gpu_session.sh's header)
# Usage: bash benchmarks/gpu_kit.sh [LABEL_MAPS_DIR]   (a few minutes, mostly xz)
set -euo pipefail
MAPS=${1:-../shared/data/synthseg_label_maps}
KIT=$(mktemp -d)
trap 'rm -rf "$KIT"' EXIT
PLATFORM=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
          --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q "${PLATFORM[@]}" -d "$KIT/wheels" SimpleITK==2.5.7 nibabel==5.4.2 nilearn==0.14.1 \
  dask==2026.8.0 distributed==2026.8.0 partd locket tblib tornado zict
python3 -m pip download -q "${PLATFORM[@]}" -d .dev1 deepbet==1.0.2 connected-components-3d fill_voids fastremap
python3 -m pip install -q --no-deps --no-compile --target "$KIT/sitk" "$KIT"/wheels/simpleitk-*.whl
rm "$KIT"/wheels/simpleitk-*.whl
python3 -m pip install -q --no-deps --no-compile --target "$KIT/site" "$KIT"/wheels/*.whl
find "$KIT/site" -name tests -type d -prune -exec rm -rf {} +
rm -rf "$KIT/site/nilearn/datasets/data/fsaverage5" "$KIT/site/bin"
mkdir -p .dev "$KIT/maps"
for f in "$MAPS"/*.nii.gz; do gzip -dc "$f" > "$KIT/maps/$(basename "$f" .gz)"; done
cp "$MAPS"/labels_table.txt "$KIT/maps/" 2>/dev/null || true
tar -C "$KIT/site" -cJf .dev/site.tar.xz .
tar -C "$KIT/sitk" -cf - . | xz -9e -T0 > .dev/sitk.tar.xz
tar -C "$KIT/maps" -cf - . | xz -9 -T0 > .dev/maps.tar.xz
ls -la .dev
