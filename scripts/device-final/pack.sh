#!/usr/bin/env bash
# Builds the release GPU test/bench binaries and the CLI, strips and xz's them into the
# git-ignored carry folders of the final GPU check (docs/performance.md, "Session 5 final
# check"): .bin-fa (tests: gpu, gpu_backward, gpu_decode, gpu_random + a.sh), .bin-fb
# (gpu_bench, attnc + b.sh), .bin-fc (c.sh; FA4 comes from .fa4b). Each folder with the
# tracked tree stays under the device tool's 64 MiB carry limit.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=scripts/device-final
out=$(cargo test --release -p attnc -p attnc-tests --test gpu --test gpu_bench --test gpu_backward \
  --test gpu_decode --test gpu_random --no-run --message-format=short 2>&1 | grep Executable)
cargo build --release -p attnc --bin attnc
mkdir -p .bin-fa .bin-fb .bin-fc
pack() { strip -o "/tmp/$2.strip" "$1" && xz -T2 -c "/tmp/$2.strip" > "$3/$2.xz" && rm "/tmp/$2.strip"; }
for t in gpu gpu_backward gpu_decode gpu_random gpu_bench; do
  bin=$(echo "$out" | grep "tests/$t.rs" | sed -E 's/.*\((.*)\)/\1/')
  dir=.bin-fa; [ "$t" = gpu_bench ] && dir=.bin-fb
  pack "$bin" "$t" "$dir"
done
pack "${CARGO_TARGET_DIR:-target}/release/attnc" attnc .bin-fb
cp $here/a.sh .bin-fa/; cp $here/b.sh $here/ncu.sh .bin-fb/; cp $here/c.sh .bin-fc/; cp $here/p.sh .bin-fb/
du -sh .bin-fa .bin-fb .bin-fc
