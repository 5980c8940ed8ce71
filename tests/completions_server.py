"""A scripted OpenAI-compatible completions server, in the test's own process, for the evaluation tests.

Every POST body is logged (`requests`, in arrival order) and answered with the text `write(request)` returns,
cut as vLLM cuts it at the first of the request's stop strings: the stop string is left out of the text, the
choice's finish_reason is "stop" and its stop_reason names the string (None when no stop string was met: the
model's end of text). `/health` answers 200. completion_tokens is the text's whitespace-separated words.
"""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, str | None]:
    """(text up to the earliest stop string, that string) or (text, None) when none occurs."""
    found = [(text.find(string), string) for string in stop or [] if string in text]
    if not found:
        return text, None
    index, string = min(found)
    return text[:index], string


class ScriptedCompletions:
    def __init__(self, write: Callable[[dict], str]):
        self.requests = []
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, body):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.reply({"status": "ok"})

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                requests.append(request)
                text, stop_reason = cut_at_stop(write(request), request.get("stop"))
                choice = {"index": 0, "text": text, "finish_reason": "stop", "stop_reason": stop_reason}
                tokens = len(text.split())
                usage = {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1}
                self.reply(
                    {
                        "id": "x",
                        "object": "text_completion",
                        "created": 0,
                        "model": request.get("model"),
                        "choices": [{**choice, "logprobs": None}],
                        "usage": usage,
                    }
                )

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def close(self):
        self._server.shutdown()
        self._server.server_close()
