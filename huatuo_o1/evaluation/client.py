"""The evaluation client's parts: the flags and their checks, the eval file, the text sent for each item,
one request, the run's key and resuming.

evaluation/eval.py runs them in order; huatuo_o1.evaluation.scoring reads the replies and
huatuo_o1.evaluation.report builds the figures.
"""

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from transformers import AutoTokenizer, PreTrainedTokenizerBase

from huatuo_o1.cli import redact
from huatuo_o1.evaluation import report, scoring
from huatuo_o1.evaluation.thinking import THINKING_KEYS, Completion, ThinkingControl
from huatuo_o1.models import from_pretrained_or_explain
from huatuo_o1.records import ANSWER_IDX, OPTIONS, QUESTION, InputError, digest, read_json

if TYPE_CHECKING:
    from openai import OpenAI

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
MAX_THREADS = 256  # requests in flight; more only queue on the server anyway
API_KEY_VARIABLE = "EVAL_API_KEY"  # eval.py's own: OPENAI_API_KEY (the data stages' teacher key) is never sent
NO_KEY = "EMPTY"  # what the original client sent; local servers ignore it
ANSWER_KEYS = ("output", "raw_output", "completion_tokens", "finish_reason")


@dataclass
class EvalArguments:
    model_name: str = field(
        metadata={"help": "Model path or hub id the server loaded; also the tokenizer for --use_chat_template."}
    )
    eval_file: str = field(
        metadata={"help": "JSON list of items, or a dict {source: [items]}; items need question, options, answer_idx."}
    )
    port: int = field(default=30000, metadata={"help": "Server port on 127.0.0.1 (ignored when --base_url is given)."})
    base_url: str | None = field(
        default=None, metadata={"help": "Any OpenAI-compatible server, e.g. http://host:8000/v1."}
    )
    max_new_tokens: int = field(default=2000, metadata={"help": "Most tokens generated per reply."})
    max_tokens: int = field(
        default=-1, metadata={"help": "Cut the question so the user prompt has at most this many tokens (-1: never)."}
    )
    use_chat_template: bool = field(
        default=True,
        metadata={"help": "Completions mode: wrap the prompt in the model's chat template here, on the client."},
    )
    keep_template_bos: bool = field(
        default=False,
        metadata={
            "help": "Send the chat template's BOS even when the server's tokenizer adds one itself "
            "(the original did: Llama-3 prompts then start with two BOS tokens)."
        },
    )
    strict_prompt: bool = field(default=False, metadata={"help": "Ask the model to end with 'The answer is X.'"})
    batch_size: int = field(
        default=1024, metadata={"help": "Requests in flight at once (one prompt each; at most 256 threads)."}
    )
    task: str = field(default="api", metadata={"help": "Label put in the output file names (the original's flag)."})
    request_mode: str = field(
        default="completions",
        metadata={"help": "'completions' (/v1/completions, the original's) or 'chat' (/v1/chat/completions)."},
    )
    served_model_name: str | None = field(
        default=None,
        metadata={"help": "The 'model' field of requests (default: --model_name; SGLang also accepts 'default')."},
    )
    temperature: float = field(default=0.5, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=0.9)
    seed: int = field(default=42, metadata={"help": "Passed to the server with every request."})
    seeds: list[int] | None = field(
        default=None,
        metadata={
            "help": "Evaluate once per seed (replaces --seed): each run a full pass with its own server seed and, "
            "for GPQA, its own option order; the report gives the spread over runs."
        },
    )
    n_runs: int = field(default=1, metadata={"help": "Runs with the seeds --seed, --seed + 1, ... (or give --seeds)."})
    gpqa_option_seed: int | None = field(
        default=None,
        metadata={
            "help": "Shuffle the options of the GPQA tracks with this seed (default: the eval file's order for one "
            "run, each run's own seed for several: the paper averaged 5 runs)."
        },
    )
    max_items_per_source: int = field(
        default=-1, metadata={"help": "Evaluate only the first N items of each source (-1: all)."}
    )
    think_budget: list[int] | None = field(
        default=None,
        metadata={
            "help": "Cut each reply's thinking at N tokens (the model's tokenizer) and make the model answer, by a "
            "second request; several budgets are several runs of one set (completions mode; docs/eval.md)."
        },
    )
    keep_thinking: int = field(
        default=0,
        metadata={
            "help": "Where the reply would end its thinking (it writes '## Final Response'), append '\n\nWait' "
            "instead, this many times, then let it answer (s1's budget forcing; completions mode)."
        },
    )
    output_dir: str = field(default="evaluation/results")
    paper_row: str = field(
        default="HuatuoGPT-o1-8B", metadata={"help": "Row of the paper's Table 1 to show beside ours."}
    )
    api_key: str | None = field(
        default_factory=lambda: os.environ.get(API_KEY_VARIABLE) or None,
        metadata={
            "help": f"Key of the inference server, if it wants one (default: ${API_KEY_VARIABLE}; else none, "
            f"'{NO_KEY}' is sent). OPENAI_API_KEY is never sent. The key is redacted from every message and file."
        },
    )
    request_timeout: float = field(
        default=3600.0, metadata={"help": "Seconds per request, queueing on the server included."}
    )
    max_retries: int = field(default=3)


def check_arguments(args: EvalArguments) -> None:
    """Values that make no sense, refused before anything is asked: one line naming the flag, the value and
    what is valid."""
    if args.request_mode not in ("completions", "chat"):
        raise InputError(f"--request_mode must be 'completions' or 'chat', not {args.request_mode!r}")
    positive = ("batch_size", "max_new_tokens", "request_timeout")
    for flag in positive:
        if getattr(args, flag) <= 0:
            raise InputError(f"--{flag} must be positive, not {getattr(args, flag)}")
    for flag in ("max_tokens", "max_items_per_source"):
        if getattr(args, flag) == 0 or getattr(args, flag) < -1:
            raise InputError(f"--{flag} is -1 (no limit) or a positive number, not {getattr(args, flag)}")
    if args.max_retries < 0:
        raise InputError(f"--max_retries must be 0 or more, not {args.max_retries}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be 0 (greedy) or more, not {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise InputError(f"--top_p must be in (0, 1], not {args.top_p}")
    if args.base_url is None and not 1 <= args.port <= 65535:
        raise InputError(f"--port {args.port} is not a TCP port: use 1 to 65535")
    if not args.task or os.sep in args.task:
        raise InputError(f"--task {args.task!r} is a label in file names: a non-empty name without '{os.sep}'")
    rows = report.paper_table()["rows"]
    if args.paper_row not in rows:
        raise InputError(f"--paper_row {args.paper_row!r} is not a row of the paper's Table 1: one of {list(rows)}")
    check_run_flags(args)
    check_thinking_flags(args)


def check_thinking_flags(args: EvalArguments) -> None:
    """--think_budget / --keep_thinking: completions mode only (they continue the reply's text), budgets distinct and
    below --max_new_tokens (a larger one never cuts), extensions 0 or more."""
    if args.keep_thinking < 0:
        raise InputError(f"--keep_thinking must be 0 or more, not {args.keep_thinking}")
    if args.think_budget is None and not args.keep_thinking:
        return
    if args.request_mode == "chat":
        flag = "--think_budget" if args.think_budget is not None else "--keep_thinking"
        raise InputError(
            f"{flag} is not available with --request_mode chat: it continues the reply's own text, which only "
            "--request_mode completions sends"
        )
    for budget in args.think_budget or []:
        if not 0 < budget < args.max_new_tokens:
            raise InputError(
                f"--think_budget {budget}: a budget is 1 to --max_new_tokens - 1 ({args.max_new_tokens - 1}) tokens"
            )
    if args.think_budget is not None and len(set(args.think_budget)) != len(args.think_budget):
        raise InputError(f"--think_budget {' '.join(map(str, args.think_budget))} repeats a budget")


def check_run_flags(args: EvalArguments) -> None:
    """--seeds / --n_runs: a list of distinct seeds or a positive count, not both; greedy decoding is one run."""
    if args.n_runs < 1:
        raise InputError(f"--n_runs must be 1 or more, not {args.n_runs}")
    if args.seeds is not None:
        if args.n_runs != 1:
            raise InputError("give --seeds or --n_runs, not both (--n_runs N runs the seeds --seed, --seed + 1, ...)")
        if len(set(args.seeds)) != len(args.seeds):
            raise InputError(f"--seeds {' '.join(map(str, args.seeds))} repeats a seed: each run needs its own")
    runs = len(args.seeds) if args.seeds is not None else args.n_runs
    if args.temperature == 0 and runs > 1:
        raise InputError(
            f"--temperature 0 is greedy: one run by construction (every seed gives the same replies), not {runs}; "
            "drop --seeds / --n_runs, or sample with a temperature above 0"
        )


def load_eval_items(path: str, max_items_per_source: int = -1) -> list[dict]:
    """Items from a list or a {source: [items]} dict, each with 'source' and a stable 'id'."""
    if not os.path.isfile(path):
        raise InputError(
            f"{path}: no such file (build the benchmark file with evaluation/prepare_eval_data.py, "
            "or try evaluation/data/demo_eval_data.json)"
        )
    data = read_json(path)
    if isinstance(data, list):
        groups = {}
        for row in data:
            source = row.get("source", "eval") if isinstance(row, dict) else "eval"
            groups.setdefault(source, []).append(row)
    elif isinstance(data, dict):
        groups = data
    else:
        raise InputError(f"{path}: expected a list of items or a dict of source -> items")
    items = []
    for source, rows in groups.items():
        if not isinstance(rows, list):
            raise InputError(f"{path}: source '{source}' is not a list of items")
        if max_items_per_source > 0:
            rows = rows[:max_items_per_source]
        for index, row in enumerate(rows):
            where = f"{path}: source '{source}', item {index}"
            if not isinstance(row, dict):
                raise InputError(f"{where} is not an object")
            for key in (QUESTION, OPTIONS, ANSWER_IDX):
                if key not in row:
                    raise InputError(f"{where} lacks '{key}'")
            if not isinstance(row["options"], dict) or not row["options"]:
                raise InputError(f"{where}: 'options' must be a non-empty dict letter -> text")
            if row["answer_idx"] not in row["options"]:
                raise InputError(
                    f"{where}: answer_idx {row['answer_idx']!r} is not one of its options {sorted(row['options'])}"
                )
            items.append({**row, "source": source, "id": f"{source}/{index}"})
    if not items:
        raise InputError(f"{path}: no items")
    return items


class PromptBuilder:
    """The text sent for one item: template, optional question cut to --max_tokens, optional chat template."""

    def __init__(self, args):
        name = "prompt_strict.txt" if args.strict_prompt else "prompt_free.txt"
        with open(os.path.join(TEMPLATE_DIR, name), encoding="utf-8") as f:
            self.template = f.read()
        self.max_tokens = args.max_tokens
        self.client_template = args.request_mode == "completions" and args.use_chat_template
        self.tokenizer = None
        thinking = args.think_budget is not None or args.keep_thinking > 0  # counted in the model's tokens
        if self.max_tokens > 0 or self.client_template or thinking:
            self.tokenizer = from_pretrained_or_explain(AutoTokenizer, args.model_name)
        if self.client_template:
            if not self.tokenizer.chat_template:
                raise InputError(
                    f"{args.model_name}: the tokenizer has no chat template; pass --use_chat_template False"
                )
            self.render_chat = chat_template_renderer(self.tokenizer)
            # The server tokenizes the text again; if that adds BOS itself, the template's BOS would be a second one.
            bos_id = self.tokenizer.bos_token_id
            server_adds_bos = bos_id is not None and self.tokenizer("x")["input_ids"][:1] == [bos_id]
            self.drop_bos = self.tokenizer.bos_token if server_adds_bos and not args.keep_template_bos else None

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def user_prompt(self, item: dict) -> str:
        options = "\n".join(f"{letter}. {text}" for letter, text in item["options"].items())
        render = lambda question: self.template.format(question=question, options=options)  # noqa: E731
        question = item["question"]
        if self.max_tokens > 0:
            count = self.count
            question_ids = self.tokenizer(question, add_special_tokens=False)["input_ids"]
            # Keep the instruction and the options whole: only the question gives way. Token counts
            # are not quite additive at the seams, so shorten one more token until it fits.
            budget = max(0, self.max_tokens - (count(render(question)) - len(question_ids)))
            while count(render(question)) > self.max_tokens and budget >= 0:
                question = self.tokenizer.decode(question_ids[:budget])
                budget -= 1
        return render(question)

    def __call__(self, item):
        prompt = self.user_prompt(item)
        if not self.client_template:
            return prompt
        text = self.render_chat([{"role": "user", "content": prompt}])
        if self.drop_bos and text.startswith(self.drop_bos):
            text = text[len(self.drop_bos) :]
        return text


def chat_template_renderer(tokenizer: PreTrainedTokenizerBase) -> Callable[[list[dict]], str]:
    """messages -> text with the generation prompt, rendered as the original client rendered the chat
    template: plain Jinja (unlike apply_chat_template, block tags keep the newlines around them) with
    only `bos_token` defined. A template plain Jinja cannot compile (e.g. one using transformers' own
    tags) falls back to apply_chat_template."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        template = ImmutableSandboxedEnvironment().from_string(tokenizer.chat_template)
    except jinja2.TemplateSyntaxError as e:
        print(f"warning: plain Jinja cannot read this chat template ({e}); using apply_chat_template", file=sys.stderr)
        return lambda messages: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return lambda messages: template.render(
        messages=messages, bos_token=tokenizer.bos_token, add_generation_prompt=True
    )


def make_client(args: EvalArguments) -> "OpenAI":
    from openai import OpenAI

    base_url = args.base_url or f"http://127.0.0.1:{args.port}/v1"
    check_server_listens(base_url)
    # The key is always passed: given None, the openai client would read OPENAI_API_KEY and send it here.
    return OpenAI(
        base_url=base_url, api_key=args.api_key or NO_KEY, max_retries=args.max_retries, timeout=args.request_timeout
    )


def check_server_listens(base_url: str) -> None:
    """Fail at once, with what to do, when nothing listens (rather than after every request's retries)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    root = urllib.parse.urlsplit(base_url)
    try:
        urllib.request.urlopen(f"{root.scheme}://{root.netloc}/health", timeout=10)
    except urllib.error.HTTPError:
        pass  # something answers: a server without /health is fine
    except (urllib.error.URLError, OSError) as e:
        raise InputError(
            f"no server answers at {base_url} ({e}); start one with `python evaluation/serve.py "
            "--model_path MODEL --port PORT`, or use evaluation/run_eval.sh"
        ) from None


def ask(client: "OpenAI", args: EvalArguments, prompt: str, thinking: ThinkingControl | None = None) -> dict:
    """One prompt, one request (with a ThinkingControl, the requests it makes); returns {output (cleaned as the
    original did), raw_output, completion_tokens, finish_reason} and, with a ThinkingControl, THINKING_KEYS."""
    if thinking is not None:
        request = lambda text, room, stop: complete(client, args, text, room, stop)  # noqa: E731
        reply = thinking.reply(request, prompt, args.max_new_tokens)
        answer = answer_record(reply.text, reply.completion_tokens, reply.finish_reason, args.api_key)
        return {**answer, **{key: getattr(reply, key) for key in THINKING_KEYS}}
    if args.request_mode == "chat":
        reply = client.chat.completions.create(
            messages=[{"role": "user", "content": prompt}], **request_parameters(args, args.max_new_tokens)
        )
        output = reply.choices[0].message.content
    else:
        reply = client.completions.create(prompt=prompt, **request_parameters(args, args.max_new_tokens))
        output = reply.choices[0].text
    tokens = reply.usage.completion_tokens if reply.usage else None
    return answer_record(output, tokens, reply.choices[0].finish_reason, args.api_key)


def request_parameters(args: EvalArguments, max_tokens: int) -> dict:
    return dict(
        model=args.served_model_name or args.model_name,
        max_tokens=max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )


def complete(client: "OpenAI", args: EvalArguments, prompt: str, max_tokens: int, stop: list | None) -> Completion:
    """One completions request of a controlled reply; a stop string is sent only when there is one."""
    reply = client.completions.create(
        prompt=prompt, **request_parameters(args, max_tokens), **({"stop": stop} if stop else {})
    )
    choice = reply.choices[0]
    return Completion(
        text=choice.text or "",
        finish_reason=choice.finish_reason,
        stop_reason=getattr(choice, "stop_reason", None) or getattr(choice, "matched_stop", None),
        completion_tokens=reply.usage.completion_tokens if reply.usage else None,
    )


def answer_record(output: str | None, tokens: int | None, finish_reason: str | None, api_key: str | None) -> dict:
    output = redact(output, api_key) if output else output  # whatever a server echoed, even in replies
    return {
        "output": scoring.clean_reply(output),
        "raw_output": output or "",
        "completion_tokens": tokens,
        "finish_reason": finish_reason,
    }


def thinking_control(args: EvalArguments, tokenizer) -> ThinkingControl | None:
    """The control of one run's replies (its budget, if any, and --keep_thinking), or None without those flags."""
    if args.think_budget is None and not args.keep_thinking:
        return None
    (budget,) = args.think_budget or [None]
    return ThinkingControl(tokenizer, budget, args.keep_thinking)


def model_identity(model_name: str) -> dict:
    """Which model answers: a folder by its resolved path and its files (name, size, time), so two folders
    that share a name, or a folder retrained in place, are different models; a hub id as written."""
    if not os.path.isdir(model_name):
        return {"model": model_name, "model_files": None}
    folder = os.path.realpath(model_name)
    files = sorted(
        (entry.name, entry.stat().st_size, entry.stat().st_mtime_ns) for entry in os.scandir(folder) if entry.is_file()
    )
    return {"model": folder, "model_files": digest(files)}


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return digest(f.read())


# Settings as typed: shown in reports, not part of the run's identity (./m and m are one model).
AS_TYPED = ("model_name", "eval_file")


def settings_of(args: EvalArguments) -> dict:
    """What decides the answers (plus the model and eval file as typed): equal settings resume each other,
    different ones never share a file."""
    keys = (
        "model_name",
        "eval_file",
        "max_items_per_source",
        "max_new_tokens",
        "max_tokens",
        "use_chat_template",
        "keep_template_bos",
        "strict_prompt",
        "request_mode",
        "served_model_name",
        "temperature",
        "top_p",
        "seed",
    )
    # The GPQA option seed and the thinking flags only where set, so runs without them keep their earlier names.
    optional = {"gpqa_option_seed": args.gpqa_option_seed, "keep_thinking": args.keep_thinking or None}
    if args.think_budget is not None:
        (optional["think_budget"],) = args.think_budget  # one run, one budget (runs.run_arguments)
    return {
        **{key: getattr(args, key) for key in keys},
        **{key: value for key, value in optional.items() if value is not None},
        **model_identity(args.model_name),
        "eval_file_sha256": file_digest(args.eval_file),
    }


def identity(settings: dict) -> dict:
    return {key: value for key, value in settings.items() if key not in AS_TYPED}


def output_stem(args: EvalArguments, settings: dict) -> str:
    """<model folder>_<task>_<eval file>[_strict]_<key>: readable, and keyed by the run's settings (a short
    hash of the resolved model and everything that decides the answers), so results never collide."""
    model = os.path.basename(os.path.normpath(args.model_name))
    data = os.path.splitext(os.path.basename(args.eval_file))[0]
    key = digest(identity(settings))[:8]
    return f"{model}_{args.task}_{data}" + ("_strict" if args.strict_prompt else "") + f"_{key}"


def read_results(path: str, ids: set) -> dict:
    """{item id: answer} from a finished run's results file (same name: same settings), so a rerun keeps them."""
    if not os.path.exists(path):
        return {}
    try:
        records = read_json(path)
        kept = lambda r: {k: r.get(k) for k in ANSWER_KEYS} | {k: r[k] for k in THINKING_KEYS if k in r}  # noqa: E731
        done = {r["id"]: {"id": r["id"], **kept(r)} for r in records if r["id"] in ids}
        if not all(isinstance(answer["output"], str) for answer in done.values()):
            raise TypeError("an output is not text")
    except (InputError, KeyError, TypeError) as e:
        raise InputError(
            f"{path}: a finished run's results, but unreadable ({type(e).__name__}: {e}); it is kept as it is: "
            "move it away to ask every question again"
        ) from None
    return done


def read_partial(path: str, settings: dict) -> dict:
    """{item id: record} from an interrupted run with the same settings."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 text (byte {e.start}); move it away to start afresh") from None
    try:
        header = json.loads(lines[0])["settings"]
        if not isinstance(header, dict):
            raise TypeError
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        if len([line for line in lines if line.strip()]) <= 1:
            return {}  # a settings line cut by a crash, and no answers: nothing to keep (the file is rewritten)
        raise InputError(
            f"{path}: line 1 is not the settings line eval.py writes, so its answers cannot be checked; "
            "move the file away to ask every question again"
        ) from None
    if identity(header) != identity(settings):
        raise InputError(f"{path} holds an interrupted run with other settings; delete it to start afresh")
    done, unreadable = {}, 0
    for line in lines[1:]:
        try:
            record = json.loads(line)
            if not isinstance(record["output"], str):
                raise TypeError
            done[record["id"]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            unreadable += 1  # a line cut by a crash: that item is asked again
    if unreadable:
        print(f"warning: {path}: {unreadable} unreadable line(s) skipped, their items asked again", file=sys.stderr)
    return done


def open_partial(path: str, settings: dict):
    """The partial file, open for appending answers: a settings line first when it has none, and a line
    cut by a crash ended, so the next answer starts a line of its own."""
    has_header = os.path.exists(path) and os.path.getsize(path) > 0 and _header_ok(path)
    partial = open(path, "a" if has_header else "w", encoding="utf-8")
    if not has_header:
        partial.write(json.dumps({"settings": settings}) + "\n")
    elif not _ends_with_newline(path):
        partial.write("\n")
    partial.flush()
    return partial


def _header_ok(path):
    with open(path, encoding="utf-8") as f:
        try:
            return isinstance(json.loads(f.readline())["settings"], dict)
        except (json.JSONDecodeError, KeyError, TypeError):
            return False


def _ends_with_newline(path):
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
