#!/usr/bin/env bash
# Evaluate a model in one command: start a server for it, run evaluation/eval.py, stop that server.
# Usage: bash evaluation/run_eval.sh MODEL [flags of evaluation/eval.py]
#   e.g. bash evaluation/run_eval.sh ckpts/sft --eval_file evaluation/data/demo_eval_data.json --max_new_tokens 100
# Environment: SERVE_ARGS (flags of evaluation/serve.py, e.g. "--backend transformers"),
#              PORT (default: a free one), PYTHON (default: python on PATH).
set -euo pipefail
if [ $# -lt 1 ]; then sed -n 2,6p "$0"; exit 2; fi
model=$1; shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
port=${PORT:-$("$PYTHON" -c 'from huatuo_o1.serving import free_port; print(free_port())')}
pid_file=$(mktemp "${TMPDIR:-/tmp}/eval_server.XXXXXX")
rm -f "$pid_file"
# shellcheck disable=SC2086  # SERVE_ARGS is a list of flags
"$PYTHON" "$here/serve.py" --model_path "$model" --port "$port" --pid_file "$pid_file" --log_file "$pid_file.log" ${SERVE_ARGS:-}
stop_server() { "$PYTHON" "$here/serve.py" --stop --pid_file "$pid_file"; }
trap stop_server EXIT
trap 'exit 130' INT TERM  # so that Ctrl-C or a kill also runs the EXIT trap
"$PYTHON" "$here/eval.py" --model_name "$model" --port "$port" "$@"
