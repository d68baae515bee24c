#!/usr/bin/env bash
# Session 20 (py20): the 15 test_cuda.py tests that py20's device call (py20.sh) did not reach
# before its 40 s per-process limit (groups 1 and 5 of its six), in three processes of at most
# REST_S s (default 45). Carry the folder scripts/python-gpu-pack.sh fills, with this script:
# `bash .bin-py20/py20-rest.sh`. Logs under $OUT: pytest_*.log.
set -u
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../python-gpu-lib.sh
. "$here/python-gpu-lib.sh"
pygpu_install
t=python/tests/test_cuda.py
ids="$t::test_hf_llama_matches_sdpa $t::test_fused_backward_matches_the_rust_backward_and_the_oracle[causal_f16]
$t::test_backward_workspace_sizes_are_cached_and_a_stale_entry_recovers $t::test_nondeterministic_backward_matches_the_oracle[learned_bias]
$t::test_every_example_gradients_match_oracle[softcap.attn:softcap] $t::test_gradients_gqa_odd_lengths_f16_bf16[f16]
$t::test_backward_in_cuda_graph[128-closed_form] $t::test_decode_matches_oracle[causal-33]
$t::test_decode_matches_oracle[sliding-100] $t::test_decode_matches_oracle[alibi-1]
$t::test_chunked_prefill_decode_is_zero_copy $t::test_block_mask_in_cuda_graph_and_without_synchronizing
$t::test_fused_backward_matches_the_rust_backward_and_the_oracle[dense] $t::test_fused_backward_deterministic_at_scale
$t::test_nondeterministic_backward_matches_the_oracle[dense64_gqa]"
echo "$ids" | tr ' ' '\n' | grep . > /tmp/rest_ids.txt
echo "$(wc -l < /tmp/rest_ids.txt) tests in 3 processes, ${REST_S:-45} s each at most"
for i in 0 1 2; do
  awk -v i="$i" 'NR % 3 == i' /tmp/rest_ids.txt > /tmp/rest_$i.txt
  ( timeout "${REST_S:-45}" "$py" -m pytest -q -rs -p no:cacheprovider $(cat /tmp/rest_$i.txt) > "$OUT/pytest_$i.log" 2>&1
    echo "rc=$?" >> "$OUT/pytest_$i.log" ) &
done
wait
for i in 0 1 2; do
  echo "-- group $i: $(grep -E '(passed|failed|error)' "$OUT/pytest_$i.log" | tail -1) $(tail -1 "$OUT/pytest_$i.log")"
  grep -E "^(FAILED|ERROR)|^E  " "$OUT/pytest_$i.log" | head -12
done
echo "== done ($((SECONDS - t0)) s) =="
