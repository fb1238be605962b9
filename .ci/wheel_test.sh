#!/usr/bin/env bash
# The package as a pip user gets it: build the wheel, install it (not editable) into a fresh
# virtual environment with the pinned dependencies, and from a folder outside the checkout run
# the help, the model table and the whole tiny pipeline (prepare -> train -> evaluate -> export
# -> predict, `mkln demo --config=tiny`).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
python=${PYTHON:-.venv/bin/python}  # builds the wheel
venv_python=${VENV_PYTHON:-$python}  # the fresh environment's Python (3.12 or 3.11)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" .
"$venv_python" -m venv "$work/venv"
"$work/venv/bin/pip" install -q --upgrade pip
version=$("$work/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
"$work/venv/bin/pip" install -q -r "requirements/lock-py$version.txt"
"$work/venv/bin/pip" install -q --no-deps "$work"/dist/mkln_jax-*.whl
cd "$work"
mkln=$work/venv/bin/mkln
"$mkln" --help
"$mkln" predict --help
"$mkln" models > /dev/null
test ! -e "$work/venv/lib/python$version/site-packages/configs"  # only mkln_jax ships
"$mkln" demo --config=tiny --workdir="$work/run" > "$work/demo.log" 2>&1 || {
  tail -50 "$work/demo.log"; exit 1; }
grep -q "verdict:" "$work/demo.log"
test -f "$work/run/export/metadata.json"
echo "wheel test passed: installed from $(ls "$work"/dist), run outside $repo"
