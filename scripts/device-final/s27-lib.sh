# Shared steps of session 27's device scripts (s27-c1.sh ..), sourced from the
# carried folder (.bin-s27/lib.sh next to cN.sh): s27_setup unpacks the named test binaries
# (NAME.xz -> $B/NAME), sets the JIT cache and the examples' folder and prints the GPU's
# state; s27_summary prints each log's result lines and panics.
B=/tmp/cb
s27_setup() {
  mkdir -p $B
  local bin
  for bin in "$@"; do xz -dc "$here/$bin.xz" > $B/$bin; chmod +x $B/$bin; done
  export ATTNC_CACHE_DIR=/tmp/attnc-cache-s27 ATTNC_EXAMPLES=$PWD/examples
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
}
s27_summary() {
  local f
  for f in "$@"; do
    echo "== $(basename $f .log): $(grep -E "^test result|ERROR SUMMARY|RACECHECK SUMMARY|rc=" $f | tr '\n' ' ' | cut -c1-200)"
    grep -E "panicked" -A3 $f | head -5
  done
}
