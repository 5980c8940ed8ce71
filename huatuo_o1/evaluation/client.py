"""The evaluation client's parts: the eval file, the text sent for each item, one request, resuming.

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

from huatuo_o1.evaluation import scoring
from huatuo_o1.models import from_pretrained_or_explain
from huatuo_o1.records import ANSWER_IDX, OPTIONS, QUESTION, InputError

if TYPE_CHECKING:
    from openai import OpenAI

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
MAX_THREADS = 256  # requests in flight; more only queue on the server anyway


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
    max_items_per_source: int = field(
        default=-1, metadata={"help": "Evaluate only the first N items of each source (-1: all)."}
    )
    output_dir: str = field(default="evaluation/results")
    paper_row: str = field(
        default="HuatuoGPT-o1-8B", metadata={"help": "Row of the paper's Table 1 to show beside ours."}
    )
    api_key: str = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY", "EMPTY"))
    request_timeout: float = field(
        default=3600.0, metadata={"help": "Seconds per request, queueing on the server included."}
    )
    max_retries: int = field(default=3)


def load_eval_items(path: str, max_items_per_source: int = -1) -> list[dict]:
    """Items from a list or a {source: [items]} dict, each with 'source' and a stable 'id'."""
    if not os.path.isfile(path):
        raise InputError(
            f"{path}: no such file (build the benchmark file with evaluation/prepare_eval_data.py, "
            "or try evaluation/data/demo_eval_data.json)"
        )
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
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
        if self.max_tokens > 0 or self.client_template:
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
    return OpenAI(base_url=base_url, api_key=args.api_key, max_retries=args.max_retries, timeout=args.request_timeout)


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


def ask(client: "OpenAI", args: EvalArguments, prompt: str) -> dict:
    """One prompt, one request; returns {output (cleaned as the original did), raw_output, completion_tokens,
    finish_reason}."""
    common = dict(
        model=args.served_model_name or args.model_name,
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.request_mode == "chat":
        reply = client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
        output = reply.choices[0].message.content
    else:
        reply = client.completions.create(prompt=prompt, **common)
        output = reply.choices[0].text
    tokens = reply.usage.completion_tokens if reply.usage else None
    return {
        "output": scoring.clean_reply(output),
        "raw_output": output or "",
        "completion_tokens": tokens,
        "finish_reason": reply.choices[0].finish_reason,
    }


def output_stem(args: EvalArguments) -> str:
    model = os.path.basename(os.path.normpath(args.model_name))
    data = os.path.splitext(os.path.basename(args.eval_file))[0]
    return f"{model}_{args.task}_{data}" + ("_strict" if args.strict_prompt else "")


def settings_of(args: EvalArguments) -> dict:
    """What must be equal for a partial run to be resumed."""
    keys = (
        "model_name",
        "eval_file",
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
    return {key: getattr(args, key) for key in keys}


def read_partial(path: str, settings: dict) -> dict:
    """{item id: record} from an interrupted run with the same settings."""
    if not os.path.exists(path):
        return {}
    done = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if lines and json.loads(lines[0]).get("settings") != settings:
        raise InputError(f"{path} holds an interrupted run with other settings; delete it to start afresh")
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: that item is asked again
        done[record["id"]] = record
    return done
