#!/usr/bin/env bash
# Create .venv and install the project with everything the tests and notebooks need.
# The CPU build of PyTorch is installed first and pinned; the range in requirements.txt is then
# already satisfied, so pip does not pull a multi-GB CUDA build. On a machine with a GPU, install
# the torch build you want first (https://pytorch.org/get-started/locally/) and run this script after.
#
# Without access to the PyTorch CPU index (offline mirror, firewall), one 5-second probe finds out and
# torch comes from PyPI instead, with one line saying so (pip itself would retry for minutes).
#   TORCH_INDEX_URL=...  another index for the CPU build
#   bash setup.sh --check-torch-index   only probe the index and print where torch would come from
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
TORCH="torch==2.13.0"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

# Prints where torch will come from: "$TORCH from <index>" when the index answers within 5 seconds,
# otherwise one line naming the index and the fallback; returns 1 in that case.
torch_index() {
    if "$1" - "$TORCH_INDEX_URL" <<'PY' 2>/dev/null; then
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).close()
PY
        echo "$TORCH from $TORCH_INDEX_URL"
    else
        echo "the PyTorch CPU index $TORCH_INDEX_URL cannot be reached (5-second probe); installing $TORCH from PyPI instead (on Linux that is the larger CUDA build)"
        return 1
    fi
}

if [ "${1:-}" = "--check-torch-index" ]; then
    torch_index "$PYTHON" || true
    exit 0
fi

[ -d .venv ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    if where=$(torch_index .venv/bin/python); then
        .venv/bin/python -m pip install --quiet "$TORCH" --index-url "$TORCH_INDEX_URL"
    else
        echo "$where"
        .venv/bin/python -m pip install --quiet "$TORCH"
    fi
fi
.venv/bin/python -m pip install --quiet -r requirements-dev.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
.venv/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null
echo "set up: $(.venv/bin/python -c 'import torch, sys; print("python", sys.version.split()[0], "| torch", torch.__version__)')"
echo "open the chapters: .venv/bin/jupyter lab notebooks/"
