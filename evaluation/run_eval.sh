#!/usr/bin/env bash
# Evaluate a model in one command: start a server for it, run evaluation/eval.py, stop that server.
# Usage: bash evaluation/run_eval.sh MODEL [MODEL_B] [flags of evaluation/eval.py]
#   e.g. bash evaluation/run_eval.sh ckpts/sft --eval_file evaluation/data/demo_eval_data.json --max_new_tokens 100
# With MODEL_B: both models are evaluated with the same flags, one after the other, then evaluation/compare.py
# compares them (B - A). Environment: SERVE_ARGS (flags of evaluation/serve.py, e.g. "--backend transformers"),
#              PORT (default: a free one), PYTHON (default: python on PATH).
set -euo pipefail
if [ $# -lt 1 ]; then sed -n 2,7p "$0"; exit 2; fi
models=("$1"); shift
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then models+=("$1"); shift; fi  # a second model, not a flag
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
pid_file="" log=""
stop_server() { if [ -n "$pid_file" ]; then "$PYTHON" "$here/serve.py" --stop --pid_file "$pid_file"; pid_file=""; fi; }
trap 'stop_server; rm -f "$log"' EXIT
trap 'exit 130' INT TERM  # so that Ctrl-C or a kill also runs the EXIT trap

results=()
for model in "${models[@]}"; do
  port=${PORT:-$("$PYTHON" -c 'from huatuo_o1.serving import free_port; print(free_port())')}
  started=$(mktemp "${TMPDIR:-/tmp}/eval_server.XXXXXX")
  rm -f "$started"
  # shellcheck disable=SC2086  # SERVE_ARGS is a list of flags
  "$PYTHON" "$here/serve.py" --model_path "$model" --port "$port" --pid_file "$started" --log_file "$started.log" ${SERVE_ARGS:-}
  pid_file=$started  # from here on the server is stopped however this script ends
  log=$(mktemp "${TMPDIR:-/tmp}/eval_output.XXXXXX")
  PYTHONUNBUFFERED=1 "$PYTHON" "$here/eval.py" --model_name "$model" --port "$port" "$@" | tee "$log"
  # eval.py's last line names what it wrote: "wrote <results>.json and <report files>"
  results+=("$(sed -n 's/^wrote \(.*\.json\) and .*/\1/p' "$log" | tail -n 1)")
  rm -f "$log"
  stop_server
done
if [ ${#models[@]} -eq 2 ]; then
  "$PYTHON" "$here/compare.py" "${results[0]}" "${results[1]}"
fi
