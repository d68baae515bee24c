#!/usr/bin/env bash
# The test command (README, CI): installs what the workspace needs, builds, and runs
# every test suite. GPU tests report themselves as skipped by name when no GPU is present
# (libtest-mimic: their skipped tests count as ignored in the standard summary line).
# Then the Python package (python/): scripts/python-setup.sh makes .venv (torch, numpy,
# pytest, maturin) and builds the package into it; pytest runs python/tests (CUDA tests
# skipped by name without a GPU). Then clippy and rustdoc, with warnings as errors.
# Ends with one summary line over all suites: "summary: N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The Python environment first (torch from PyPI is ~3 GB): while the disk is emptiest.
bash scripts/python-setup.sh --deps
export CARGO_TERM_COLOR=never
cargo build --workspace --all-targets --exclude attnc-python
log=$(mktemp)
status=0
cargo test --workspace --exclude attnc-python --no-fail-fast 2>&1 | tee "$log" || status=$?
bash scripts/python-setup.sh
.venv/bin/python -m pytest python/tests -v -rs -p no:cacheprovider 2>&1 | tee -a "$log" | grep -Ev " PASSED " || status=1
# formatting, lints and docs: no diffs, no warnings (after the tests, so a lint never hides a test failure)
lint_start=$SECONDS
cargo fmt --all --check || status=$?
cargo clippy --workspace --exclude attnc-python --all-targets -- -D warnings || status=$?
# the Python extension (PyO3) against the environment's interpreter
PYO3_PYTHON="$PWD/.venv/bin/python" cargo clippy -p attnc-python --all-targets -- -D warnings || status=$?
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --exclude attnc-python --no-deps || status=$?
echo "clippy + doc: $((SECONDS - lint_start)) s"
python3 - "$log" <<'PY'
import re, sys
passed = failed = skipped = 0
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"test result: \w+\. (\d+) passed; (\d+) failed; (\d+) ignored", line)
    if m:
        passed += int(m[1]); failed += int(m[2]); skipped += int(m[3])
    if re.match(r"=+ .* in [\d.]+s", line):  # pytest's closing line
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?)", line):
            if what == "passed": passed += int(n)
            elif what == "skipped": skipped += int(n)
            else: failed += int(n)
    # GPU test binaries with a hand-written loop (before libtest-mimic) print this line
    m = re.match(r"gpu tests: (\d+) passed, (\d+) failed, (\d+) skipped", line)
    if m:
        passed += int(m[1]); failed += int(m[2]); skipped += int(m[3])
print(f"summary: {passed} passed, {failed} failed, {skipped} skipped")
PY
rm -f "$log"
exit $status
