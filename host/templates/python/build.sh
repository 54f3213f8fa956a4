#!/bin/sh
# Builds dist/{{name}}.wasm. Needs componentize-py:
#   pip install componentize-py=={{componentize_py}}
set -eu
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null; then
  echo "componentize-py is not installed: pip install componentize-py=={{componentize_py}}" >&2
  exit 1
fi
mkdir -p dist
componentize-py -d wit -w plugin componentize app -o dist/{{name}}.wasm
