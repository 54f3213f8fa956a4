# Functions shared by the scripts that install pinned tools from the
# package registries into target/. Each keeps a stamp (a copy of the pins it
# installed) and does nothing when the pins did not change.

# python_env DEST REQUIREMENTS: a venv at DEST with REQUIREMENTS installed.
python_env() {
  local dest="$1" pins="$2"
  if ! cmp -s "$pins" "$dest.stamp"; then
    rm -rf "$dest"
    python3 -m venv "$dest" >&2
    "$dest/bin/pip" install --quiet --disable-pip-version-check -r "$pins" >&2
    cp "$pins" "$dest.stamp"
  fi
}

# node_env DEST PINS_DIR: the packages of PINS_DIR/package.json, as locked
# in PINS_DIR/package-lock.json, installed at DEST/node_modules.
node_env() {
  local dest="$1" pins="$2"
  if ! cmp -s "$pins/package-lock.json" "$dest.stamp"; then
    rm -rf "$dest"
    mkdir -p "$dest"
    cp "$pins/package.json" "$pins/package-lock.json" "$dest/"
    # `npm ci` refuses locks that leave out other platforms' optional
    # packages; `npm install` keeps to the lock for everything it installs.
    (cd "$dest" && npm install --no-audit --no-fund --loglevel=error >&2)
    cp "$pins/package-lock.json" "$dest.stamp"
  fi
}
