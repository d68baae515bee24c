#!/usr/bin/env bash
# Installs every system dependency the attnc workspace needs on a fresh Debian machine:
# LLVM 22 (static libraries, for the PTX backend through inkwell) and the C libraries it links.
# Idempotent: does nothing when everything is already present.
set -euo pipefail
need=()
[ -x /usr/lib/llvm-22/bin/llvm-config ] || need+=(llvm-22-dev libpolly-22-dev)
dpkg -s zlib1g-dev >/dev/null 2>&1 || need+=(zlib1g-dev)
dpkg -s libzstd-dev >/dev/null 2>&1 || need+=(libzstd-dev)
dpkg -s libffi-dev >/dev/null 2>&1 || need+=(libffi-dev)
dpkg -s libxml2-dev >/dev/null 2>&1 || need+=(libxml2-dev)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required" >&2; exit 1; }
echo "setup: LLVM $(/usr/lib/llvm-22/bin/llvm-config --version) at /usr/lib/llvm-22"
