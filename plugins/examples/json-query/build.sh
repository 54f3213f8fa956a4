#!/bin/sh
# Builds OUT/json_query.wasm (OUT defaults to dist) with componentize-js
# against the repository's wit/. scripts/guest-toolchains installs it.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)"
componentize-js --wit "$here/../../../wit" --world-name plugin -o "$out/json_query.wasm" "$here/json_query.js"
