#!/usr/bin/env bash
# Installs PyTorch before hamdam so that a machine without CUDA never pulls the multi-GB CUDA build.
#   CUDA present (nvidia-smi works): torch==$TORCH_VERSION from PyPI (CUDA build).
#   otherwise: torch==$TORCH_VERSION+cpu, found in a local wheel directory (PIP_FIND_LINKS) or the
#   PyTorch CPU index (set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "torch already installed: $("$PYTHON" -c 'import torch; print(torch.__version__)')"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q "torch==${TORCH_VERSION}"
else
  "$PYTHON" -m pip install -q "torch==${TORCH_VERSION}+cpu"
fi
