#!/bin/bash
# Sets up .venv on a fresh accelerator host: `bash mkln_jax/launch/setup_host.sh PLATFORM`,
# run from the checkout. Cloud TPU VM images ship Python 3.10, below what the project needs
# (3.11+): where no Python 3.11+ is on the PATH, uv (from the package index) installs 3.12 first.
# MKLN_PYTHON_CANDIDATES overrides the interpreters looked for (in order).
set -euo pipefail
platform=${1:?usage: setup_host.sh PLATFORM}
found=""
for p in ${MKLN_PYTHON_CANDIDATES:-python3.12 python3.11 python3}; do
    if command -v "$p" >/dev/null && "$p" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
        found=$(command -v "$p")
        break
    fi
done
if [ -z "$found" ]; then
    echo "mkln: no Python >= 3.11 here ($(python3 --version 2>&1 || echo none)); installing 3.12 with uv"
    export PATH="$HOME/.local/bin:$PATH"
    if ! command -v uv >/dev/null; then
        python3 -m pip install -q --user uv
    fi
    uv python install 3.12
    found=$(uv python find 3.12)
fi
if ! command -v make >/dev/null; then
    sudo apt-get install -y -q make
fi
echo "mkln: setting up .venv with $found for PLATFORM=$platform"
make setup PLATFORM="$platform" PYTHON="$found"
