#!/usr/bin/env bash
# Session 25 call 4: FA4 part a, and main's wheel installed into /tmp/attnc-s25 for call 5
# (carry .fa4a, .bin-fc25). Call 5 (carry .fa4b, within the warm window):
#   bash .fa4b/install.sh b; PYTHONPATH=/tmp/attnc-s25:$(cat /tmp/fa4site.path) python3 python/bench/flash_step.py --cases ... 
set -u
here=$(cd "$(dirname "$0")" && pwd)
bash .fa4a/install.sh a 2>&1 | tail -3
rm -rf /tmp/attnc-s25
python3 -m pip install -q --disable-pip-version-check --no-deps --no-index --target /tmp/attnc-s25 "$here"/attnc-*.whl && echo "attnc wheel installed"
