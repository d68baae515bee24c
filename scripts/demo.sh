#!/usr/bin/env bash
# The main job (README quick start): installs what is needed, builds attnc, checks every
# example, and runs every example attention through the CPU backend (and the GPU backend
# when a CUDA device is present), comparing each with the reference oracle.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release -p attnc
bin=target/release/attnc
"$bin" check examples/*.attn
backends=cpu
if "$bin" cuda-info >/dev/null 2>&1; then backends=cpu,cuda; fi
"$bin" demo examples --backends "$backends"
"$bin" blockmask examples/document_sliding_causal.attn --lq 2048 --lkv 2048 --block 128 | head -30
