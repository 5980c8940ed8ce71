"""Ask a served model every multiple-choice question of an eval file, score the replies, write a report.

The model runs behind any OpenAI-compatible server (SGLang or vLLM on GPUs, `transformers serve`
on a CPU machine; see evaluation/serve.py). Prompts go out concurrently, one prompt per request,
which every server accepts. Finished replies are appended to a `.partial.jsonl` file as they
arrive, so an interrupted run picks up where it stopped when started again with the same flags.

Usage (the paper's command, with a server on port 30000):
    python evaluation/eval.py --model_name FreedomIntelligence/HuatuoGPT-o1-8B \
        --eval_file evaluation/data/eval_data.json --port 30000 [--strict_prompt]

Any server, chat endpoint (the server applies the chat template):
    python evaluation/eval.py --model_name MODEL --eval_file FILE --base_url http://host:port/v1 \
        --request_mode chat

Start, evaluate and stop in one command: `bash evaluation/run_eval.sh MODEL_DIR [flags of this script]`.

The text sent is the paper's (see docs/eval.md): the paper's prompt wording, the chat template
rendered as the original client rendered it; replies are cleaned as the original cleaned them
(every "</s>" removed, then one leading space) before scoring. Where we deliberately differ (one
BOS token, not two; --max_tokens; one prompt per request) docs/fidelity.md says so.

Writes to --output_dir: <name>.json (every item with its prompt, reply and verdicts),
<name>_report.json (accuracy per source, both scoring views, format_rate), <name>_report.md
(beside the paper's Table 1) and <name>_report.png (bar chart).
"""

import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tqdm import tqdm  # noqa: E402
from transformers import AutoTokenizer, HfArgumentParser  # noqa: E402

from evaluation import report, scoring  # noqa: E402
from pipeline_io import InputError, from_pretrained_or_explain, write_json_atomic  # noqa: E402

TEMPLATE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
MAX_THREADS = 256  # requests in flight; more only queue on the server anyway


@dataclass
class EvalArguments:
    model_name: str = field(metadata={"help": "Model path or hub id the server loaded; also the tokenizer for --use_chat_template."})
    eval_file: str = field(metadata={"help": "JSON list of items, or a dict {source: [items]}; items need question, options, answer_idx."})
    port: int = field(default=30000, metadata={"help": "Server port on 127.0.0.1 (ignored when --base_url is given)."})
    base_url: Optional[str] = field(default=None, metadata={"help": "Any OpenAI-compatible server, e.g. http://host:8000/v1."})
    max_new_tokens: int = field(default=2000, metadata={"help": "Most tokens generated per reply."})
    max_tokens: int = field(default=-1, metadata={"help": "Cut the question so the user prompt has at most this many tokens (-1: never)."})
    use_chat_template: bool = field(default=True, metadata={"help": "Completions mode: wrap the prompt in the model's chat template here, on the client."})
    keep_template_bos: bool = field(default=False, metadata={"help": "Send the chat template's BOS even when the server's tokenizer adds one itself "
                                                                    "(the original did: Llama-3 prompts then start with two BOS tokens)."})
    strict_prompt: bool = field(default=False, metadata={"help": "Ask the model to end with 'The answer is X.'"})
    batch_size: int = field(default=1024, metadata={"help": "Requests in flight at once (one prompt each; at most 256 threads)."})
    task: str = field(default="api", metadata={"help": "Label put in the output file names (the original's flag)."})
    request_mode: str = field(default="completions", metadata={"help": "'completions' (/v1/completions, the original's) or 'chat' (/v1/chat/completions)."})
    served_model_name: Optional[str] = field(default=None, metadata={"help": "The 'model' field of requests (default: --model_name; SGLang also accepts 'default')."})
    temperature: float = field(default=0.5, metadata={"help": "Sampling temperature (0: greedy)."})
    top_p: float = field(default=0.9)
    seed: int = field(default=42, metadata={"help": "Passed to the server with every request."})
    max_items_per_source: int = field(default=-1, metadata={"help": "Evaluate only the first N items of each source (-1: all)."})
    output_dir: str = field(default="evaluation/results")
    paper_row: str = field(default="HuatuoGPT-o1-8B", metadata={"help": "Row of the paper's Table 1 to show beside ours."})
    api_key: str = field(default_factory=lambda: os.environ.get("OPENAI_API_KEY", "EMPTY"))
    request_timeout: float = field(default=3600.0, metadata={"help": "Seconds per request, queueing on the server included."})
    max_retries: int = field(default=3)


def load_eval_items(path, max_items_per_source=-1):
    """Items from a list or a {source: [items]} dict, each with 'source' and a stable 'id'."""
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file (build the benchmark file with evaluation/prepare_eval_data.py, "
                         "or try evaluation/data/demo_eval_data.json)")
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
            for key in ("question", "options", "answer_idx"):
                if key not in row:
                    raise InputError(f"{where} lacks '{key}'")
            if not isinstance(row["options"], dict) or not row["options"]:
                raise InputError(f"{where}: 'options' must be a non-empty dict letter -> text")
            if row["answer_idx"] not in row["options"]:
                raise InputError(f"{where}: answer_idx {row['answer_idx']!r} is not one of its options {sorted(row['options'])}")
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
                raise InputError(f"{args.model_name}: the tokenizer has no chat template; pass --use_chat_template False")
            self.render_chat = chat_template_renderer(self.tokenizer)
            # The server tokenizes the text again; if that adds BOS itself, the template's BOS would be a second one.
            bos_id = self.tokenizer.bos_token_id
            server_adds_bos = bos_id is not None and self.tokenizer("x")["input_ids"][:1] == [bos_id]
            self.drop_bos = self.tokenizer.bos_token if server_adds_bos and not args.keep_template_bos else None

    def count(self, text):
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def user_prompt(self, item):
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


def chat_template_renderer(tokenizer):
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
    return lambda messages: template.render(messages=messages, bos_token=tokenizer.bos_token, add_generation_prompt=True)


def make_client(args):
    from openai import OpenAI

    base_url = args.base_url or f"http://127.0.0.1:{args.port}/v1"
    check_server_listens(base_url)
    return OpenAI(base_url=base_url, api_key=args.api_key, max_retries=args.max_retries, timeout=args.request_timeout)


def check_server_listens(base_url):
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
        raise InputError(f"no server answers at {base_url} ({e}); start one with `python evaluation/serve.py "
                         "--model_path MODEL --port PORT`, or use evaluation/run_eval.sh") from None


def ask(client, args, prompt):
    """One prompt, one request; returns {output (cleaned as the original did), raw_output, completion_tokens, finish_reason}."""
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
    return {"output": scoring.clean_reply(output), "raw_output": output or "", "completion_tokens": tokens,
            "finish_reason": reply.choices[0].finish_reason}


def output_stem(args):
    model = os.path.basename(os.path.normpath(args.model_name))
    data = os.path.splitext(os.path.basename(args.eval_file))[0]
    return f"{model}_{args.task}_{data}" + ("_strict" if args.strict_prompt else "")


def settings_of(args):
    """What must be equal for a partial run to be resumed."""
    keys = ("model_name", "eval_file", "max_new_tokens", "max_tokens", "use_chat_template", "keep_template_bos", "strict_prompt",
            "request_mode", "served_model_name", "temperature", "top_p", "seed")
    return {key: getattr(args, key) for key in keys}


def read_partial(path, settings):
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


def main(args):
    if args.request_mode not in ("completions", "chat"):
        raise InputError(f"--request_mode must be 'completions' or 'chat', not {args.request_mode!r}")
    items = load_eval_items(args.eval_file, args.max_items_per_source)
    build_prompt = PromptBuilder(args)
    for item in items:
        item["prompt"] = build_prompt(item)
    if args.max_tokens > 0:
        over = sum(build_prompt.count(build_prompt.user_prompt(item)) > args.max_tokens for item in items)
        if over:
            print(f"warning: {over} prompts exceed --max_tokens {args.max_tokens} even with the question cut away "
                  "(the instruction and options are never cut)", file=sys.stderr)

    os.makedirs(args.output_dir, exist_ok=True)
    stem = os.path.join(args.output_dir, output_stem(args))
    partial_path = stem + ".partial.jsonl"
    settings = settings_of(args)
    done = read_partial(partial_path, settings)
    pending = [item for item in items if item["id"] not in done]
    print(f"{len(items)} items, {len(done)} already answered (resumed), {len(pending)} to ask")

    failures = []
    if pending:
        client = make_client(args)
        new_file = not os.path.exists(partial_path)
        with open(partial_path, "a", encoding="utf-8") as partial, ThreadPoolExecutor(min(args.batch_size, MAX_THREADS, len(pending))) as pool:
            if new_file:
                partial.write(json.dumps({"settings": settings}) + "\n")
                partial.flush()
            futures = {pool.submit(ask, client, args, item["prompt"]): item for item in pending}
            try:
                for future in tqdm(as_completed(futures), total=len(futures), desc="questions"):
                    item = futures[future]
                    try:
                        answer = future.result()
                    except Exception as e:  # after the client's own retries: leave it for a rerun
                        failures.append(f"{item['id']}: {type(e).__name__}: {e}")
                        continue
                    done[item["id"]] = {"id": item["id"], **answer}
                    partial.write(json.dumps(done[item["id"]], ensure_ascii=False) + "\n")
                    partial.flush()
            except KeyboardInterrupt:
                # Every finished reply is already on disk; don't wait for the requests in flight.
                print(f"\ninterrupted: {len(done)} answers kept in {partial_path}; rerun to continue", file=sys.stderr)
                partial.close()
                os._exit(130)
    if failures:
        print(f"{len(failures)} requests failed (first: {failures[0]}). Answers so far are kept in "
              f"{partial_path}; run the same command again to ask only the missing ones.", file=sys.stderr)
        return 1

    results = []
    for item in items:
        answer = done[item["id"]]
        results.append({**item, **answer, "verdict": scoring.score_item(item, answer["output"])})
    summary = report.build_report(results, settings, args.paper_row)
    write_json_atomic(stem + ".json", results)
    report.write_reports(summary, stem + "_report")
    if os.path.exists(partial_path):
        os.remove(partial_path)
    print(report.markdown_table(summary))
    print(f"wrote {stem}.json and {stem}_report.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    parser = HfArgumentParser(EvalArguments)
    (eval_args,) = parser.parse_args_into_dataclasses()
    try:
        sys.exit(main(eval_args))
    except InputError as e:
        sys.exit(f"error: {e}")
