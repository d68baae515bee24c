#!/usr/bin/env bash
# Session 25 call 9: the fixed document case of test_chunked_prefill_with_host_lengths (captures
# at the paged cache's capacity), default routing; the wheel installed by call 8 (/tmp/attnc-py).
cp .bin-s25b/test_cuda.py .bin-py25/tree/python/tests/test_cuda.py 2>/dev/null
cd .bin-py25/tree 2>/dev/null || exit 3
PYTHONPATH=/tmp/attnc-py timeout 100 python3 -m pytest python/tests/test_cuda.py -q -p no:cacheprovider -k "chunked_prefill_with_host and document" 2>&1 | tail -5
