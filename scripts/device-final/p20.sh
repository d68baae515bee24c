#!/usr/bin/env bash
# session 20 final check call P (after C: FA4 installed): py20's training step attnc vs Flex FLASH vs SDPA cuDNN (fc.sh), then test_cuda.py + host_step (py18.sh)
set -u
here=$(cd "$(dirname "$0")" && pwd)
FC_S=${FC_S:-62} bash "$here/fc.sh"
PYTEST_S=${PYTEST_S:-60} BENCH_S=${BENCH_S:-40} bash "$here/py18.sh"
