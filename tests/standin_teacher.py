"""A stand-in teacher LLM for tests and the demo: a real OpenAI-compatible HTTP server, NOT a model.

The data stages talk to "any OpenAI-compatible endpoint" (GPT-4o in the paper). Tests and the CPU
demo cannot reach one, so this server answers /v1/chat/completions with deterministic, scripted
replies in the formats the data stages parse (docs/data.md), looking the right answer up in an
answer key (a JSON list of multiple-choice items with `question`, `options`, `answer`). It can
inject faults and counts calls.

What a request asks for is recognised from the fixed words the prompts must contain:
    filter     "Not Reformulatable"           -> one of Pass / Too Simple / Ambiguous Answer / Not Reformulatable
    reformat   "Ground-True Answer"           -> {"Open-ended Verifiable Question": ..., "Ground-True Answer": ...}
    natural    "NaturalReasoning"             -> {"NaturalReasoning": "...multi-line thinking..."}
    cot        "Inner Thinking" and "Final Conclusion" -> {"CoT": [actions...]}
    verify     "True" and "False"             -> "True" or "False"
    response   anything else                  -> a short final answer in prose

Scripted reasoning: a question is answered correctly once the prompt already holds as many wrong
rounds (each marked WRONG_GUESS_MARK in an Inner Thinking title) as the item's
`standin_rounds_to_correct` (an int, or -1 for never; default from a hash of the question), or at
once when the prompt reveals the answer (the label-hinted round). A wrong round concludes "The answer
is <a wrong option>." A verification compares like a careful grader would: it is "False" exactly when
the prompt holds an item's reference answer and "the answer is <one of that item's wrong options>",
so verification prompts should show only the latest conclusion and the reference. The verdicts are
therefore honest labels for training a verifier. Filter verdicts come from the item's
`standin_filter`, else "Ambiguous Answer" for NOT/EXCEPT questions, else "Pass".

Faults (`--fault_rate`, `--faults`): 429 (with retry-after-ms), 500, timeout (sleeps --timeout_sleep_s
before answering), malformed (truncated JSON / an unusable verdict). `--wrap` sets how JSON is
presented: plain, fence (```json), prose (sentences around a fence) or mixed.

Endpoints: GET /health, GET /v1/models, POST /v1/chat/completions,
GET /admin/stats (counts and a log of every call), POST /admin/config (change knobs), POST /admin/reset.

Usage:
    python tests/standin_teacher.py --port 8011 --answer_key data/demo_data.json --latency_ms 100
"""

import argparse
import hashlib
import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WRONG_GUESS_MARK = "[stand-in: wrong guess]"
FILTER_LABELS = ("Pass", "Too Simple", "Ambiguous Answer", "Not Reformulatable")
FAULT_TYPES = ("429", "500", "timeout", "malformed")
DEFAULT_ROUNDS = (0, 0, 1, 2, -1)  # picked by hash: right at once, after 1 or 2 fixes, or never


def _stable_hash(text):
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16)


def _normalise(text):
    return re.sub(r"\s+", " ", text).strip().lower()


class AnswerKey:
    """Finds which multiple-choice item a prompt is about."""

    def __init__(self, items):
        self.items = [item for item in items if item.get("question")]
        self._stems = [_normalise(item["question"])[:80] for item in self.items]

    def names_a_wrong_option(self, prompt):
        """True when the prompt holds an item's reference answer and concludes on another of its options."""
        text = _normalise(prompt)
        for item in self.items:
            answer = _normalise(item.get("answer", ""))
            if not answer or answer not in text:
                continue
            for option in (item.get("options") or {}).values():
                if _normalise(option) != answer and f"the answer is {_normalise(option)}" in text:
                    return True
        return False

    def find(self, prompt):
        text = _normalise(prompt)
        for item, stem in zip(self.items, self._stems):
            if stem and stem in text:
                return item
        return None


class Teacher:
    """Scripted replies; all state is guarded by one lock."""

    def __init__(self, answer_key, config):
        self.key = answer_key
        self.config = dict(config)
        self.lock = threading.Lock()
        self.rng = random.Random(self.config["seed"])
        self.reset()

    def reset(self):
        self.calls = []  # one dict per request: kind, outcome, question, time
        self.started = time.time()

    # ---- what to say -------------------------------------------------------------------
    @staticmethod
    def kind_of(prompt):
        if "Not Reformulatable" in prompt:
            return "filter"
        if "Ground-True Answer" in prompt:
            return "reformat"
        if "NaturalReasoning" in prompt:
            return "natural"
        if "Inner Thinking" in prompt and "Final Conclusion" in prompt:
            return "cot"
        if "True" in prompt and "False" in prompt:
            return "verify"
        return "response"

    @staticmethod
    def _rounds_to_correct(item):
        if "standin_rounds_to_correct" in item:
            return int(item["standin_rounds_to_correct"])
        return DEFAULT_ROUNDS[_stable_hash(item["question"]) % len(DEFAULT_ROUNDS)]

    @staticmethod
    def _stem(item):
        return item["question"].strip()

    @staticmethod
    def _last_sentence(text):
        sentences = [part for part in re.split(r"(?<=[.?!])\s+", text.strip()) if part]
        return sentences[-1] if sentences else text

    def _wrong_option(self, item, round_index):
        wrong = [text for text in (item.get("options") or {}).values() if text != item.get("answer")]
        return wrong[round_index % len(wrong)] if wrong else "an unrelated condition"

    def reply(self, kind, prompt, item):
        """Return (text, is_json)."""
        answer = item.get("answer", "unknown") if item else "unknown"
        stem = self._stem(item) if item else "the question"
        if kind == "filter":
            verdict = (item or {}).get("standin_filter")
            if verdict is None:
                verdict = "Ambiguous Answer" if re.search(r"\b(NOT|EXCEPT)\b", stem) else "Pass"
            return f"After reading the item, my judgement is: {verdict}", False
        if kind == "reformat":
            return {"Open-ended Verifiable Question": stem, "Ground-True Answer": answer}, True
        if kind == "natural":
            # Short on purpose: a small model fine-tuned on it should answer in a few dozen tokens.
            thinking = (
                f"Let me work through this. The question is: {self._last_sentence(stem)}\n\n"
                "I go over the key findings and the usual causes one at a time and rule out those that do not "
                "fit.\n\n"
                f"That leaves {answer} as the best fit."
            )
            return {"NaturalReasoning": thinking}, True
        if kind == "cot":
            wrong_so_far = prompt.count(WRONG_GUESS_MARK)
            label_round = item is not None and _normalise(answer) in _normalise(prompt)
            rounds = self._rounds_to_correct(item) if item else -1
            correct = label_round or (rounds >= 0 and wrong_so_far >= rounds)
            conclusion = f"The answer is {answer if correct else self._wrong_option(item or {}, wrong_so_far)}."
            first_title = "Key findings" if correct else f"Key findings {WRONG_GUESS_MARK}"
            actions = []
            if wrong_so_far:
                actions.append(
                    {"action": "Verification", "content": "The previous conclusion does not hold up; I revisit it."}
                )
            actions += [
                {"action": "Inner Thinking", "title": first_title, "content": f"Restating the problem: {stem}"},
                {
                    "action": "Inner Thinking",
                    "title": "Weighing options",
                    "content": "I compare the likely causes against the findings.",
                },
                {"action": "Final Conclusion", "content": conclusion},
                {
                    "action": "Verification",
                    "content": "Checking the conclusion against the findings, it is consistent.",
                },
            ]
            return {"CoT": actions}, True
        if kind == "verify":
            return ("False" if self.key.names_a_wrong_option(prompt) else "True"), False
        return f"The answer is {answer}. It fits the findings best.", False

    def present(self, payload, is_json, wrap):
        if not is_json:
            return payload
        body = json.dumps(payload, ensure_ascii=False, indent=1)
        if wrap == "mixed":
            wrap = ("plain", "fence", "prose")[_stable_hash(body) % 3]
        if wrap == "fence":
            return f"```json\n{body}\n```"
        if wrap == "prose":
            return f"Sure, here is the result you asked for.\n\n```json\n{body}\n```\n\nLet me know if you need more."
        return body

    # ---- one request ---------------------------------------------------------------------
    def handle_chat(self, request):
        prompt = "\n".join(str(m.get("content", "")) for m in request.get("messages", []))
        kind = self.kind_of(prompt)
        item = self.key.find(prompt)
        with self.lock:
            config = dict(self.config)
            fault = None
            if config["fault_rate"] > 0 and self.rng.random() < config["fault_rate"]:
                fault = self.rng.choice(config["faults"])
            self.calls.append(
                {
                    "kind": kind,
                    "outcome": fault or "ok",
                    "question": item["question"] if item else None,
                    "time": round(time.time() - self.started, 4),
                }
            )
        if config["latency_ms"]:
            time.sleep(config["latency_ms"] / 1000)
        if fault == "timeout":
            time.sleep(config["timeout_sleep_s"])
        if fault in ("429", "500"):
            return int(fault), {"error": {"message": f"stand-in injected HTTP {fault}", "type": "standin_fault"}}
        payload, is_json = self.reply(kind, prompt, item)
        text = self.present(payload, is_json, config["wrap"])
        if fault == "malformed":
            text = text[: max(1, len(text) // 2)] if is_json else "Maybe."
        return 200, {
            "id": f"standin-{len(self.calls)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "standin-teacher"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": len(prompt) // 4,
                "completion_tokens": len(text) // 4,
                "total_tokens": len(prompt) // 4 + len(text) // 4,
            },
        }

    def stats(self):
        with self.lock:
            calls = list(self.calls)

        def count(field):
            return {v: sum(1 for c in calls if c[field] == v) for v in sorted({c[field] for c in calls}, key=str)}

        return {"total": len(calls), "by_kind": count("kind"), "by_outcome": count("outcome"), "calls": calls}


def make_handler(teacher):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body go out in two writes; with Nagle's algorithm on, the client's delayed ACK
        # then stalls every reply by ~40 ms (measured: 19 replies/s on one connection at zero latency).
        disable_nagle_algorithm = True

        def log_message(self, *args):  # quiet: the stats endpoint is the log
            pass

        def _send(self, status, obj, headers=None):
            body = json.dumps(obj).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. its timeout fired first)

        def _body(self):
            length = int(self.headers.get("Content-Length") or 0)
            return json.loads(self.rfile.read(length) or b"{}")

        def do_GET(self):
            if self.path == "/health":
                self._send(200, {"status": "ok"})
            elif self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "standin-teacher", "object": "model"}]})
            elif self.path == "/admin/stats":
                self._send(200, teacher.stats())
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_POST(self):
            try:
                request = self._body()
            except json.JSONDecodeError:
                self._send(400, {"error": {"message": "body is not JSON"}})
                return
            if self.path.rstrip("/").endswith("/chat/completions"):
                status, obj = teacher.handle_chat(request)
                self._send(status, obj, {"retry-after-ms": "10"} if status == 429 else None)
            elif self.path == "/admin/config":
                unknown = set(request) - set(teacher.config)
                if unknown:
                    self._send(400, {"error": {"message": f"unknown knobs: {sorted(unknown)}"}})
                    return
                with teacher.lock:
                    teacher.config.update(request)
                    if "seed" in request:
                        teacher.rng.seed(request["seed"])
                self._send(200, teacher.config)
            elif self.path == "/admin/reset":
                with teacher.lock:
                    teacher.reset()
                self._send(200, {"status": "reset"})
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

    return Handler


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8011)
    parser.add_argument("--answer_key", help="JSON list of multiple-choice items (question, options, answer)")
    parser.add_argument("--latency_ms", type=float, default=0.0, help="added to every reply")
    parser.add_argument("--fault_rate", type=float, default=0.0, help="share of calls that get a fault")
    parser.add_argument("--faults", default=",".join(FAULT_TYPES), help=f"comma list from {FAULT_TYPES}")
    parser.add_argument("--timeout_sleep_s", type=float, default=3.0, help="how long a 'timeout' fault stalls")
    parser.add_argument("--wrap", default="plain", choices=["plain", "fence", "prose", "mixed"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    faults = [f for f in args.faults.split(",") if f]
    bad = set(faults) - set(FAULT_TYPES)
    if bad:
        parser.error(f"unknown fault types {sorted(bad)}; choose from {FAULT_TYPES}")
    items = []
    if args.answer_key:
        with open(args.answer_key, encoding="utf-8") as f:
            items = json.load(f)
    config = {k: getattr(args, k) for k in ("latency_ms", "fault_rate", "timeout_sleep_s", "wrap", "seed")}
    config["faults"] = faults
    teacher = Teacher(AnswerKey(items), config)
    # The default listen backlog (5) drops connection attempts when many clients connect at once,
    # and each dropped one waits a 1 s TCP retransmit: far from what a real endpoint does.
    ThreadingHTTPServer.request_queue_size = 128
    server = ThreadingHTTPServer((args.host, args.port), make_handler(teacher))
    server.daemon_threads = True
    print(
        f"stand-in teacher (scripted, not a model) on http://{args.host}:{args.port}/v1 with {len(items)} "
        "answer-key items",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
