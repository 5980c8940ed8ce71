#!/usr/bin/env bash
# Stop the evaluation server that evaluation/serve.py started, by the PID it recorded, and nothing
# else (the name is kept from the paper's repository; it stops SGLang, vLLM or transformers serve).
# The PID file must prove the process is ours (PID, start time and command line, all checked again);
# a file without that proof is refused: nothing is signalled, exit status 1.
# Usage: bash evaluation/kill_sglang_server.sh [PID_FILE]     (default: evaluation/server.pid)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
exec "$PYTHON" "$here/serve.py" --stop ${1:+--pid_file "$1"}
