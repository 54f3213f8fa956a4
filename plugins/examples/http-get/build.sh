#!/bin/sh
# Builds OUT/http_get.wasm and its capability file OUT/http_get.toml (OUT
# defaults to dist). The crate is a member of the plugins/ workspace.
set -eu
here="$(cd "$(dirname "$0")" && pwd)"
out="$(mkdir -p "${1:-$here/dist}" && cd "${1:-$here/dist}" && pwd)"
target="${CARGO_TARGET_DIR:-$here/../../../target/wasm-plugins}"
(cd "$here/../.." && cargo build --release --target wasm32-wasip2 -p http-get --target-dir "$target")
cp "$target/wasm32-wasip2/release/http_get.wasm" "$out/"
cp "$here/capabilities.toml" "$out/http_get.toml"
