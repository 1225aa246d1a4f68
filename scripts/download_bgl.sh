#!/usr/bin/env bash
# Fetch Loghub's full BGL log (Zenodo record 8196385) for users with a network.
# Nothing in fame's tests or CI depends on this.
set -euo pipefail
dest=${1:-data/BGL}
mkdir -p "$dest"
url="https://zenodo.org/records/8196385/files/BGL.zip?download=1"
echo "downloading BGL (about 700 MB unpacked) into $dest ..." >&2
if command -v curl >/dev/null; then curl -fL "$url" -o "$dest/BGL.zip"; else wget -O "$dest/BGL.zip" "$url"; fi
(cd "$dest" && unzip -o BGL.zip)
echo "done: $dest/BGL.log" >&2
