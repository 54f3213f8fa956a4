#!/bin/sh
# Builds dist/{{name}}.wasm with componentize-js (`npm install` brings it, or
# have `componentize-js` on PATH).
set -eu
cd "$(dirname "$0")"
bin=$(command -v componentize-js || echo node_modules/.bin/componentize-js)
if [ ! -x "$bin" ]; then
  echo "componentize-js is not installed: run npm install" >&2
  exit 1
fi
mkdir -p dist
"$bin" --wit wit --world-name plugin -o dist/{{name}}.wasm index.js
