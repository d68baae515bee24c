#!/usr/bin/env bash
# Session 45, CPU call on the GPU machine's 16-core host (carry .bin-s45cpu: attnc-old.xz =
# main before the backward's diagonal tables, attnc-new.xz = with them; release builds):
# the CPU backward of the relative-position examples at 16 threads, interleaved
# (scripts/cpu_ab_bwd.sh), and the training step of SDPA with the bias gathered from the
# learned table (scripts/cpu_relbias_torch.py with ATTNC_GRAD=1), f32 B1 H8 L2048.
set -u
mkdir -p /tmp/s45
for b in old new; do xz -dc .bin-s45cpu/attnc-$b.xz > /tmp/s45/attnc-$b; chmod +x /tmp/s45/attnc-$b; done
nproc; python3 -c "import torch; print(torch.__version__)"
bash scripts/cpu_ab_bwd.sh /tmp/s45/attnc-old /tmp/s45/attnc-new 16 2
ATTNC_GRAD=1 ATTNC_THREADS=16 timeout 150 python3 scripts/cpu_relbias_torch.py 2>&1 | grep -v Warn
echo "== done ($SECONDS s)"
