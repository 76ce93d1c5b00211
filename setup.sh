#!/usr/bin/env bash
# Create .venv and install the project with everything the tests and notebooks need.
# The CPU build of PyTorch is installed first and pinned; the range in requirements.txt is then
# already satisfied, so pip does not pull a multi-GB CUDA build. On a machine with a GPU, install
# the torch build you want first (https://pytorch.org/get-started/locally/) and run this script after.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -d .venv ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    .venv/bin/python -m pip install --quiet "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
        || .venv/bin/python -m pip install --quiet "torch==2.13.0"
fi
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null
echo "set up: $(.venv/bin/python -c 'import torch, sys; print("python", sys.version.split()[0], "| torch", torch.__version__)')"
echo "open the chapters: .venv/bin/jupyter lab notebooks/"
