#!/usr/bin/env bash
# The GPU check on the GPU machine, in one command: install what .gpu_wheels/ carries (tools/gpu_wheels.sh makes
# it here), run bench/gpu_check.py within a time limit, and copy its results into $OUT when the device tool set it.
#
#   device tool: run(command="bash bench/gpu_check.sh", carry=[".gpu_wheels"], timeout_s=540)
#   a second try on the still-warm machine: bash bench/gpu_check.sh --only ppo reload   (flags go to gpu_check.py)
#
# $OUT receives gpu_check.json, gpu_check.md and gpu_check_logs.tar.gz (every step's log, the summaries and
# figures the steps wrote, the install log; no weights). GPU_CHECK_LIMIT_S (default 480: 8 minutes) bounds the
# whole of it, installing included; the check itself gets what is left, less a margin to write and copy results.
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
PY=${PY:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
LIMIT_S=${GPU_CHECK_LIMIT_S:-480}
RESULTS=bench_out/gpu
mkdir -p "$RESULTS/logs"
INSTALL_LOG=$RESULTS/logs/install.log
export PYTHONUNBUFFERED=1
if [ ! -f .gpu_wheels/tokenizer/tokenizer.json ]; then
  echo "error: no .gpu_wheels/ here: run 'bash tools/gpu_wheels.sh' before the trip and pass carry=[\".gpu_wheels\"]" >&2
  exit 2
fi

# Install once per machine (a warm machine keeps $SITE): the wheels and deepspeed's source archive together, one
# version of each, into a folder of their own put first on the path. Without the archive if it does not build.
stamp="$SITE/.installed-$(find .gpu_wheels -maxdepth 1 -type f -printf '%f %s\n' | sort | md5sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  rm -rf "$SITE"
  pip_install() { $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$SITE" "$@"; }
  echo "installing $(ls .gpu_wheels | grep -c -E '\.(whl|tar\.gz)$') packages into $SITE" | tee "$INSTALL_LOG"
  if ! pip_install .gpu_wheels/*.whl .gpu_wheels/*.tar.gz >>"$INSTALL_LOG" 2>&1; then
    echo "installing the source archive failed (see $INSTALL_LOG): the wheels alone" | tee -a "$INSTALL_LOG"
    rm -rf "$SITE"
    pip_install .gpu_wheels/*.whl >>"$INSTALL_LOG" 2>&1 || echo "installing the wheels failed too" | tee -a "$INSTALL_LOG"
  fi
  mkdir -p "$SITE" && touch "$stamp"
fi
# the carried packages first, then this checkout's huatuo_o1 (not installed there)
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
{
  echo "installed in $(($(date +%s) - started)) s"
  $PY tools/check_wheels.py --installed "$SITE" 2>&1
  $PY -c "import importlib.metadata as m, platform
names = ('torch', 'transformers', 'accelerate', 'deepspeed', 'trl', 'datasets', 'openai', 'pydantic', 'fastapi',
         'uvicorn', 'pyarrow', 'fsspec', 'anyio', 'typing_extensions', 'numpy', 'flash-attn', 'vllm')
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return None
print('python', platform.python_version(), {name: version(name) for name in names})"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
} | tee -a "$INSTALL_LOG"

left=$((LIMIT_S - ($(date +%s) - started)))
left=$((left > 90 ? left : 90))
timeout -k 20 "$((left - 15))" $PY bench/gpu_check.py --deadline "$((left - 45))" "$@"
status=$?
[ "$status" -eq 124 ] && echo "gpu_check: stopped at the time limit (GPU_CHECK_LIMIT_S=$LIMIT_S)"

if [ -n "${OUT:-}" ]; then
  cp "$RESULTS"/gpu_check.json "$RESULTS"/gpu_check.md "$OUT"/ 2>/dev/null
  tar czf "$OUT/gpu_check_logs.tar.gz" -C "$RESULTS" --exclude='*.safetensors' --exclude='*.bin' --exclude='*.pt' \
    --exclude='tokenizer.json' logs steps models/models.json 2>/dev/null
  ls -la "$OUT"
fi
echo "gpu_check.sh: exit $status after $(($(date +%s) - started)) s"
exit "$status"
