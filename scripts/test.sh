#!/usr/bin/env bash
# The test command (README, CI): installs what the workspace needs, builds, and runs
# every test suite. GPU tests report themselves as skipped by name when no GPU is present.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR=never
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
