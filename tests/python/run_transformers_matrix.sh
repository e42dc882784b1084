#!/usr/bin/env bash
# Runs tests/python/test_transformers.py and test_quantized.py against the newest and the oldest transformers that
# shardstream.transformers is tested on: the project venv's own transformers (the newest, locked
# in scripts/requirements.txt), then the oldest, at the exact versions of
# scripts/transformers-oldest-requirements.txt, installed once under $SHARDSTREAM_CACHE and put
# first on PYTHONPATH so that it shadows the venv's (torch, safetensors and the rest stay the
# venv's). Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "$0")/../../scripts/env.sh"
lock="$SHARDSTREAM_ROOT/scripts/transformers-oldest-requirements.txt"
OLDEST="$(sed -n 's/^transformers==//p' "$lock")"
# The folder is named after the lock's contents, so a changed lock installs afresh.
prefix="$SHARDSTREAM_CACHE/transformers-$OLDEST-$(grep -v '^#' "$lock" | sha256sum | cut -c1-12)"
test_files=("$SHARDSTREAM_ROOT/tests/python/test_transformers.py"
            "$SHARDSTREAM_ROOT/tests/python/test_quantized.py")

if [ ! -f "$prefix/.complete" ]; then
  echo "transformers matrix: installing transformers $OLDEST into $prefix"
  rm -rf "$prefix.tmp"
  # --no-deps keeps the venv's torch and numpy.
  "$SHARDSTREAM_PYTHON" -m pip install -q --no-deps --target "$prefix.tmp" -r "$lock"
  rm -rf "$prefix"
  mv "$prefix.tmp" "$prefix"
  touch "$prefix/.complete"
fi

# The package must be installed (pip install .) before this runs: a missing one fails here
# rather than skipping the tests.
export SHARDSTREAM_REQUIRE_PACKAGE="${SHARDSTREAM_REQUIRE_PACKAGE:-1}"
status=0
newest="$("$SHARDSTREAM_PYTHON" -c 'import transformers; print(transformers.__version__)')"
echo "==> transformers $newest (venv)"
"$SHARDSTREAM_PYTHON" -m pytest -q -p no:cacheprovider "${test_files[@]}" "$@" || status=$?

got="$(PYTHONPATH="$prefix${PYTHONPATH:+:$PYTHONPATH}" "$SHARDSTREAM_PYTHON" -c \
  'import transformers; print(transformers.__version__)')"
if [ "$got" != "$OLDEST" ]; then
  echo "error: expected transformers $OLDEST from $prefix, imported $got" >&2
  exit 1
fi
echo "==> transformers $got ($prefix)"
PYTHONPATH="$prefix${PYTHONPATH:+:$PYTHONPATH}" \
  "$SHARDSTREAM_PYTHON" -m pytest -q -p no:cacheprovider "${test_files[@]}" "$@" || status=$?
exit $status
