#!/usr/bin/env bash
# Build the single-file executable: DIST_DIR/clusterodm, from packaging/clusterodm.spec.
#
#   packaging/build-single-file.sh [DIST_DIR]        (default: ./dist)
#
# Works in a fresh virtual environment under WORK_DIR (default: ./build/single-file) holding
# only this package and PyInstaller (the `bundle` extra), so whatever else the calling Python
# has installed stays out of the file. Needs python3 (>= 3.11, with venv and a shared libpython,
# as Debian's and python.org's are) and access to PyPI or a mirror.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
dist="$(realpath -m "${1:-dist}")"
work="$(realpath -m "${WORK_DIR:-build/single-file}")"
python="${PYTHON:-python3}"

rm -rf "$work"
mkdir -p "$work/src"
# a copy of what the package needs, so the checkout gets no build/ or egg-info from pip
cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/clusterodm" "$work/src/"
"$python" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work/src[bundle]"
"$work/venv/bin/python" -m PyInstaller --noconfirm --clean --log-level WARN \
  --distpath "$dist" --workpath "$work/pyinstaller" "$repo/packaging/clusterodm.spec"
echo "built $dist/clusterodm"
