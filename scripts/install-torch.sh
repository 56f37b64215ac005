#!/usr/bin/env bash
# Installs PyTorch before hamdam so that a machine without CUDA does not pull the multi-GB CUDA build.
#   CUDA present (nvidia-smi works): torch==$TORCH_VERSION from the package index (CUDA build).
#   otherwise: torch==$TORCH_VERSION+cpu, from a local wheel directory (PIP_FIND_LINKS) or the PyTorch
#   CPU index ($TORCH_CPU_INDEX); when neither has it (an offline machine with only a package index),
#   torch==$TORCH_VERSION from the package index, whichever build that is. It says which it installed.
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
installed() { "$PYTHON" -W ignore -c 'import torch; print(torch.__version__, "(CUDA build)" if torch.version.cuda else "(CPU build)")'; }
if "$PYTHON" -c "import torch" 2>/dev/null; then
  echo "torch already installed: $(installed)"
  exit 0
fi
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q "torch==${TORCH_VERSION}"
elif ! "$PYTHON" -m pip install -q --retries 1 --timeout 20 --extra-index-url "$TORCH_CPU_INDEX" \
    "torch==${TORCH_VERSION}+cpu" 2>/dev/null; then
  echo "torch==${TORCH_VERSION}+cpu is in no local wheel directory and $TORCH_CPU_INDEX cannot be reached;" \
       "installing torch==${TORCH_VERSION} from the package index instead" >&2
  "$PYTHON" -m pip install -q "torch==${TORCH_VERSION}"
fi
echo "installed torch $(installed)"
