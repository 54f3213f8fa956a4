#!/bin/sh
# Builds OUT/csv_stats.wasm (OUT defaults to dist) with componentize-py
# against the repository's wit/. scripts/guest-toolchains installs it.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)"
componentize-py -d "$here/../../../wit" -w plugin componentize -p "$here" app -o "$out/csv_stats.wasm"
