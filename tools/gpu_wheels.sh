#!/usr/bin/env bash
# Download here what the GPU check (bench/gpu_check.py) needs on the GPU machine and the machine lacks, into
# .gpu_wheels/ (git-ignored; the device tool carries it: carry [".gpu_wheels"]). That machine has Python 3.12,
# torch, transformers and accelerate but no network: trl, datasets, openai, pydantic, fastapi, uvicorn and
# deepspeed travel as files, with every dependency of theirs that the machine does not have
# (tools/gpu_machine_packages.txt lists what it has). bench/gpu_check.sh installs them there.
#
#   bash tools/gpu_wheels.sh            # -> .gpu_wheels/ (wheels, deepspeed's source archive, tokenizer/)
#
# Versions: constraints.txt's where it pins one (trl, datasets, openai, deepspeed), else the versions `make test`
# installs beside them. One version of each package (pip refuses two). tools/check_wheels.py then checks that
# every requirement of every carried package is met by the carried set or by the machine. The size of the wheels
# plus what git tracks must stay under the device tool's 64 MiB: above it this script fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=.gpu_wheels
LIMIT_BYTES=$((64 * 1024 * 1024))
TOKENIZER_FROM=.cache/models/SmolLM2-135M-Instruct

pinned() { sed -n "s/^$1==\([^ ]*\).*/\1/p" constraints.txt; }
WHEELS=(
  "trl==$(pinned trl)" "datasets==$(pinned datasets)" "openai==$(pinned openai)"
  # datasets
  dill==0.4.1 multiprocess==0.70.19
  # openai (its HTTP client is httpx2, not the machine's httpx)
  httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 jiter==0.19.0 sniffio==1.3.1
  # pydantic, for openai, fastapi and deepspeed; typing-extensions and idna although the machine has them:
  # pydantic needs typing-extensions>=4.16 and httpx2 idna>=3.18, newer than the machine's may be
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0 idna==3.20
  # `transformers serve` (evaluation/serve.py --backend transformers)
  fastapi==0.136.3 starlette==1.10.0 uvicorn==0.55.0
  # deepspeed
  hjson==3.1.0
)
DEEPSPEED="deepspeed==$(pinned deepspeed)"  # no wheel on the registry: its source archive, built there

rm -rf "$OUT" && mkdir -p "$OUT"
quiet() { "$@" 2>&1 | { grep -v -E "is ignored: it is neither a file nor a directory|^Looking in|^Collecting|^  Downloading|^  File was already|^Saved |^Successfully downloaded" || true; }; }
quiet $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$OUT" "${WHEELS[@]}"
quiet $PY -m pip download -q --no-deps --no-binary=:all: --no-build-isolation -d "$OUT" "$DEEPSPEED"

# The SmolLM2 tokenizer (not its weights): the check's random models speak its vocabulary.
[ -f "$TOKENIZER_FROM/tokenizer.json" ] || $PY tools/get_smollm2.py >/dev/null
mkdir -p "$OUT/tokenizer"
cp "$TOKENIZER_FROM"/tokenizer.json "$TOKENIZER_FROM"/tokenizer_config.json "$TOKENIZER_FROM"/chat_template.jinja \
  "$OUT/tokenizer/"
[ -f "$TOKENIZER_FROM/special_tokens_map.json" ] && cp "$TOKENIZER_FROM/special_tokens_map.json" "$OUT/tokenizer/"

$PY tools/check_wheels.py "$OUT"

carried=$(du -sb "$OUT" | cut -f1)
tracked=$(git ls-files -z --cached --others --exclude-standard | xargs -0 stat -c %s 2>/dev/null \
  | awk '{s += $1} END {print s + 0}')
total=$((carried + tracked))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo "$OUT: $(ls "$OUT" | grep -c -E '\.(whl|tar\.gz)$') package files + tokenizer, $(mib "$carried"); the tree that travels with it: $(mib "$tracked"); together $(mib "$total") of $(mib $LIMIT_BYTES)"
if [ "$total" -gt "$LIMIT_BYTES" ]; then
  echo "error: over the device tool's 64 MiB: carry less" >&2
  exit 1
fi
