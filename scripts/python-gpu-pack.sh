#!/usr/bin/env bash
# Packs the Python package's GPU check for the device machine into one git-ignored
# folder (default /work/main/.bin-pycuda: a device `run` sends /work/main's checkout, so
# the folder lives there and is carried): the release abi3 wheel (scripts/python-wheel.sh),
# pytest's wheels for CPython 3.12 (pip download; installed there only when the device's
# Python lacks pytest), this checkout's python/{tests,bench,examples} and examples/, and
# scripts/python-gpu-remote.sh (and python-gpu-quick.sh: the same check in ~110 s;
# python-gpu-select.sh: a chosen part; python-gpu-lib.sh: their shared steps). Prints
# the device command.
#   bash scripts/python-gpu-pack.sh [DEST]
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-/work/main/.bin-pycuda}
rm -rf "$dest"
mkdir -p "$dest/wheels" "$dest/tree/python"
# python-wheel.sh takes a folder relative to the repository root
bash scripts/python-wheel.sh .whl
cp .whl/attnc-*.whl "$dest/wheels/"
.venv/bin/python -m pip download -q --disable-pip-version-check --only-binary=:all: \
  --python-version 3.12 --platform manylinux2014_x86_64 -d "$dest/wheels" pytest
cp -r python/tests python/bench python/examples "$dest/tree/python/"
cp -r examples "$dest/tree/examples"
find "$dest/tree" -name __pycache__ -prune -exec rm -rf {} +
cp scripts/python-gpu-remote.sh scripts/python-gpu-quick.sh scripts/python-gpu-select.sh \
  scripts/python-gpu-lib.sh "$dest/"
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')" > "$dest/COMMIT"
du -sh "$dest" "$dest"/wheels/*
echo "device command (run tool, carry [\"$(basename "$dest")\"], timeout_s 600): bash $(basename "$dest")/python-gpu-remote.sh"
