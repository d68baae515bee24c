# Shared steps of the Python package's GPU checks (sourced by python-gpu-quick.sh and
# python-gpu-select.sh, which scripts/python-gpu-pack.sh copies beside it into the
# carried folder; $here is that folder). Defines:
#   pygpu_install        installs the wheel (and pytest's wheels where the device's Python
#                        lacks pytest) into /tmp/attnc-py, prints the versions and the GPU,
#                        exports PYTHONPATH, PYTHONUNBUFFERED and ATTNC_CACHE_DIR and enters
#                        $here/tree
#   pygpu_pytest K N S   the tests of python/tests/test_cuda.py (or of $PYTEST_FILES, a
#                        space-separated list) selected by the pytest -k
#                        expression K, dealt round-robin to N pytest processes at once (JIT
#                        compiles are CPU-bound; the JIT's disk cache is shared under its
#                        file locks), each stopped after S seconds; logs
#                        $OUT/pytest_<i>.log, a summary on stdout
# Uses $OUT (default /tmp/attnc-out), $PYTHON (default python3); sets $py and $t0.
OUT=${OUT:-/tmp/attnc-out}
mkdir -p "$OUT"
py=${PYTHON:-python3}
t0=$SECONDS

pygpu_install() {
  local site=/tmp/attnc-py
  rm -rf "$site"
  {
    echo "packed from commit $(cat "$here/COMMIT" 2>/dev/null)"
    "$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'x', torch.cuda.device_count())"
    local wheels=("$here"/wheels/attnc-*.whl)
    "$py" -c "import pytest" 2>/dev/null || wheels+=($(ls "$here"/wheels/*.whl | grep -v '/attnc-'))
    "$py" -m pip install -q --disable-pip-version-check --no-deps --no-index --target "$site" "${wheels[@]}"
  } 2>&1
  export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 ATTNC_CACHE_DIR=/tmp/attnc-cache
  cd "$here/tree" || exit 1
}

pygpu_pytest() {
  local expr=$1 n=$2 limit=$3 i
  # shellcheck disable=SC2086
  "$py" -m pytest ${PYTEST_FILES:-python/tests/test_cuda.py} -q --collect-only -p no:cacheprovider -k "$expr" 2>/dev/null \
    | grep '::' > /tmp/ids.txt
  echo "$(wc -l < /tmp/ids.txt) tests in $n processes, $limit s each at most"
  for i in $(seq 0 $((n - 1))); do
    awk -v n="$n" -v i="$i" 'NR % n == i' /tmp/ids.txt > /tmp/ids_$i.txt
    [ -s /tmp/ids_$i.txt ] || continue
    ( timeout "$limit" "$py" -m pytest -q -rs -p no:cacheprovider $(cat /tmp/ids_$i.txt) \
        > "$OUT/pytest_$i.log" 2>&1
      echo "rc=$?" >> "$OUT/pytest_$i.log" ) &
  done
  wait
  for i in $(seq 0 $((n - 1))); do
    [ -f "$OUT/pytest_$i.log" ] || continue
    echo "-- group $i: $(grep -E '(passed|failed|error)' "$OUT/pytest_$i.log" | tail -1) $(tail -1 "$OUT/pytest_$i.log")"
    grep -E "^(FAILED|ERROR)|^E  " "$OUT/pytest_$i.log" | head -12
  done
}
