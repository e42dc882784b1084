# Sourced by the other scripts: where shardstream keeps what it installs outside the clone.
# Override SHARDSTREAM_CACHE to move it (default ~/.cache/shardstream).
SHARDSTREAM_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARDSTREAM_CACHE="${SHARDSTREAM_CACHE:-$HOME/.cache/shardstream}"
SHARDSTREAM_TORCH_SERIES="2.11"
SHARDSTREAM_VENV="${SHARDSTREAM_VENV:-$SHARDSTREAM_CACHE/venv-torch-$SHARDSTREAM_TORCH_SERIES}"
SHARDSTREAM_PYTHON="$SHARDSTREAM_VENV/bin/python"
SHARDSTREAM_BUILD_DIR="${SHARDSTREAM_BUILD_DIR:-$SHARDSTREAM_ROOT/build}"
# ccache shared by every clone: paths are rewritten relative to the clone, and the working
# directory is not hashed, so a fresh clone in another folder still hits the cache.
export CCACHE_DIR="${CCACHE_DIR:-$SHARDSTREAM_CACHE/ccache}"
export CCACHE_BASEDIR="$SHARDSTREAM_ROOT"
export CCACHE_NOHASHDIR=1
export CCACHE_MAXSIZE="${CCACHE_MAXSIZE:-5G}"

# Prints "[stage] NAME took N s" for the timing summary.
shardstream_stage_start() { SHARDSTREAM_STAGE_T0=$(date +%s.%N); echo "==> $1"; }
shardstream_stage_end() {
  local t1; t1=$(date +%s.%N)
  printf '[stage] %-10s %6.1f s\n' "$1" "$(echo "$t1 - $SHARDSTREAM_STAGE_T0" | bc)" | tee -a "${SHARDSTREAM_TIMINGS:-/dev/null}"
}
