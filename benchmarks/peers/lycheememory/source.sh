#!/usr/bin/env bash
# The authors' source (github.com/owoakuma/LycheeMemory) at the commit the parity results were made with,
# unpacked from a git directory (a clone, or a bare mirror) into DEST (default: inside this folder's venv,
# .venv/lycheememory-source, which git ignores). Their code is not vendored in this repository.
#
#     git clone https://github.com/owoakuma/LycheeMemory /tmp/LycheeMemory
#     bash benchmarks/peers/lycheememory/source.sh /tmp/LycheeMemory [DEST]
set -euo pipefail
commit=e4b93d8fa09c1258a14c708d75551d2bca58c446
here="$(cd "$(dirname "$0")" && pwd)"
repo="${1:?usage: source.sh GIT_DIR_OR_CLONE [DEST]}"
dest="${2:-$here/.venv/lycheememory-source}"
if [ -d "$repo/.git" ]; then gitdir="$repo/.git"; else gitdir="$repo"; fi
mkdir -p "$dest"
git --git-dir="$gitdir" archive "$commit" | tar -x -C "$dest"
echo "$commit" > "$dest/COMMIT"
echo "LycheeMemory source at $commit in $dest"
