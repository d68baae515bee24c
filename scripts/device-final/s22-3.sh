#!/usr/bin/env bash
# Session 22 call 3 (carry .fa4b; after calls 1 and 2 on the same warm machine): FA4 part b;
# then with FlexAttention's FLASH backend / FA4 in the same call: rt21's training step through
# Python (dense, causal; attnc deterministic / deterministic=False vs Flex FLASH and SDPA
# cuDNN), bwd64x's D64 check (FA4 deterministic=True), and issue 11's / 10's remaining shapes
# (sliding 1024, document + causal: attnc forward through `attnc bench`, backward through the
# kernel bench, then Flex FLASH / FA4 direct / varlen / cuDNN: scripts/device-final/d21.sh).
set -u
O=${OUT:-/tmp/s22-3}; mkdir -p $O; t0=$(date +%s); el() { echo $(( $(date +%s) - t0 )); }
bash .fa4b/install.sh b 2>&1 | tail -1
echo "=== install b done ($(el) s)"
echo "=== rt21 fc: training step ($(el) s)"
OUT=$O FC_S=70 bash /tmp/rt22/fc.sh 2>&1 | cut -c1-230
echo "=== bwd64x fc ($(el) s)"
mkdir -p /tmp/bwd64xb; cp /tmp/bwd21b/gpu_backward /tmp/bwd64xb/
OUT=$O timeout 60 bash .bin-fc/bwd64x/fc.sh 2>&1 | tail -20 | cut -c1-220
echo "=== d21: sliding / documents ($(el) s)"
mkdir -p /tmp/fb /tmp/fa; cp /tmp/d21/attnc /tmp/fb/; cp /tmp/bwd21b/gpu_backward /tmp/fa/
OUT=$O timeout $(( 560 - $(el) )) bash scripts/device-final/d21.sh 2>&1 | cut -c1-260
echo "total $(el) s"
