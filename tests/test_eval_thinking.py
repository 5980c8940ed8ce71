"""Thinking controlled at test time (eval.py --think_budget, --keep_thinking): the exact requests against a scripted
server, the results' fields, several budgets as one set and its report, the refusals, the report's length bins on
hand-made results, and one real run: SmolLM2 behind vLLM with a budget of 16 tokens.

The scripted runs use a word tokenizer (every whitespace-separated word is one token), so every count and cut
below is checked by hand.
"""

import importlib.util
import json
import os
import re
import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoTokenizer, HfArgumentParser, PreTrainedTokenizerFast

from huatuo_o1.evaluation import report, scoring
from huatuo_o1.evaluation.client import EvalArguments, check_thinking_flags, output_stem, settings_of
from huatuo_o1.evaluation.runs import run_key
from huatuo_o1.evaluation.thinking import Completion, ThinkingControl, thinking_span
from huatuo_o1.records import InputError
from huatuo_o1.serving import free_port
from tests.completions_server import ScriptedCompletions
from tests.scripts import run_command, run_script

ITEMS = [
    {
        "question": f"Which vitamin deficiency causes {disease}?",
        "options": {"A": "Vitamin C", "B": "Vitamin D"},
        **gold,
    }
    for disease, gold in (("scurvy", {"answer_idx": "A"}), ("rickets", {"answer_idx": "B"}))
]
# The scripted model: 6 thinking words then a wrong answer for scurvy, 3 then the right one for rickets.
LONG_REPLY = "## Thinking\n\nfirst second third fourth fifth sixth.\n\n## Final Response\n\nThe answer is B."
SHORT_REPLY = "## Thinking\n\nshort thought here\n\n## Final Response\n\nThe answer is B."
FORCED_ANSWER = "The answer is A."  # what it answers when made to


def budget_model(request):
    prompt = request["prompt"]
    if prompt.endswith("\n\n## Final Response\n\n"):
        return FORCED_ANSWER
    return LONG_REPLY if "scurvy" in prompt else SHORT_REPLY


def keep_thinking_model(request):
    """Thinks "A thought." and ends its thinking; after a "Wait" takes a second look; rickets: no headings at all."""
    prompt = request["prompt"]
    if "rickets" in prompt:
        return "No headings here, the answer is B."
    if prompt.endswith("Wait"):
        return ", second look.\n\n## Final Response\n\nThe answer is A."
    return "## Thinking\n\nA thought.\n\n## Final Response\n\nThe answer is B."


def word_tokenizer(folder):
    """A model folder whose tokenizer makes each whitespace-separated word one token."""
    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
    return folder


@pytest.fixture
def scripted():
    """scripted(write) -> a ScriptedCompletions answering with write(request); all closed at the end."""
    servers = []

    def start(write):
        servers.append(ScriptedCompletions(write))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def eval_argv(tmp_path, base_url, *flags):
    model = tmp_path / "model"
    argv = ["--model_name", model, "--eval_file", tmp_path / "eval.json", "--base_url", base_url]
    argv += ["--use_chat_template", "False", "--output_dir", tmp_path / "out", "--max_retries", "0"]
    return [str(arg) for arg in [*argv, "--max_new_tokens", "50", *flags]]


def evaluate(tmp_path, base_url, *flags):
    if not (tmp_path / "eval.json").exists():
        (tmp_path / "eval.json").write_text(json.dumps({"S": ITEMS}))
        word_tokenizer(tmp_path / "model")
    return run_script("evaluation/eval.py", eval_argv(tmp_path, base_url, *flags))


def results_of(tmp_path, *flags):
    """{question's last word: record} and the report of the run these flags name (as eval.py names its files)."""
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(eval_argv(tmp_path, "", *flags))
    stem = os.path.join(args.output_dir, output_stem(args, settings_of(args)))
    with open(stem + ".json") as f:
        records = {r["question"].split()[-1].rstrip("?"): r for r in json.load(f)}
    with open(stem + "_report.json") as f:
        return records, json.load(f)


def evaluate_with(server, tmp_path, *flags):
    """Evaluate against the server; returns its records, report and each item's requests (in the order sent)."""
    result = evaluate(tmp_path, server.base_url, *flags)
    assert result.returncode == 0, result.stderr
    records, summary = results_of(tmp_path, *flags)
    return records, summary, {word: [r for r in server.requests if word in r["prompt"]] for word in records}


def test_a_budget_cuts_long_thinking_and_makes_the_model_answer(scripted, tmp_path):
    server = scripted(budget_model)
    records, summary, sent = evaluate_with(server, tmp_path, "--think_budget", "4")

    # Scurvy thinks 6 words: the first request is the plain one (the reply's cap: --max_new_tokens, no stop
    # string); the second continues its first 4 thinking words with the final-response heading, its cap 50 minus
    # the 9 words the reply holds ("## Thinking first second third fourth ## Final Response").
    prompt = records["scurvy"]["prompt"]
    first, second = sent["scurvy"]
    assert (first["prompt"], first["max_tokens"], "stop" in first) == (prompt, 50, False)
    kept = "## Thinking\n\nfirst second third fourth\n\n## Final Response\n\n"
    assert (second["prompt"], second["max_tokens"], "stop" in second) == (prompt + kept, 41, False)
    assert {k: first[k] for k in ("temperature", "top_p", "seed")} == {"temperature": 0.5, "top_p": 0.9, "seed": 42}
    assert {k: second[k] for k in ("temperature", "top_p", "seed", "model")} == {
        k: first[k] for k in ("temperature", "top_p", "seed", "model")
    }
    scurvy = records["scurvy"]
    assert scurvy["raw_output"] == kept + FORCED_ANSWER == scurvy["output"]
    assert (scurvy["thinking_tokens"], scurvy["thinking_cut"], scurvy["thinking_extensions"]) == (4, True, 0)
    assert scurvy["completion_tokens"] == 15 + 4  # both requests' words: the 11 cut away are spent too
    assert scurvy["verdict"]["honest"]["first_correct"]  # the forced answer, A, is scored

    # Rickets thinks 3 words, within the budget: one request, its reply as it came.
    (only,) = sent["rickets"]
    assert (only["prompt"], only["max_tokens"]) == (records["rickets"]["prompt"], 50)
    rickets = records["rickets"]
    assert rickets["raw_output"] == SHORT_REPLY and rickets["completion_tokens"] == 12
    assert (rickets["thinking_tokens"], rickets["thinking_cut"], rickets["thinking_extensions"]) == (3, False, 0)
    assert len(server.requests) == 3

    # The report: thinking lengths and accuracy by length (one bin: 0-16 tokens).
    assert summary["settings"]["think_budget"] == 4 and "keep_thinking" not in summary["settings"]
    assert summary["thinking"] == {
        "mean_thinking_tokens": 3.5,
        "max_thinking_tokens": 4,
        "cut_rate": 50.0,
        "extended_rate": 0.0,
        "mean_extensions": 0.0,
        "by_length": [{"tokens": "0-16", "n": 2, "paper_accuracy": 100.0, "honest_first_match_accuracy": 100.0}],
    }
    stem = next((tmp_path / "out").glob("*_report.md")).with_suffix("")
    assert "| 0-16 | 2 | 100.0 | 100.0 |" in stem.with_suffix(".md").read_text()
    assert "budget 4 tokens" in stem.with_suffix(".md").read_text()
    assert (tmp_path / "out" / f"{stem.name}_thinking.png").read_bytes()[:4] == b"\x89PNG"

    # Without the flag: the same first requests, files of their own, no thinking fields, the replies as they came.
    asked = len(server.requests)
    assert evaluate(tmp_path, server.base_url).returncode == 0
    assert sorted(map(json.dumps, server.requests[asked:])) == sorted(json.dumps(r) for r in (first, only))
    plain, plain_summary = results_of(tmp_path)
    assert plain["scurvy"]["raw_output"] == LONG_REPLY and "thinking_tokens" not in plain["scurvy"]
    assert "thinking" not in plain_summary and "think_budget" not in plain_summary["settings"]
    assert len(list((tmp_path / "out").glob("*_thinking.png"))) == 1  # the budget run's only


def test_keep_thinking_appends_wait_where_the_thinking_would_end(scripted, tmp_path):
    records, summary, sent = evaluate_with(scripted(keep_thinking_model), tmp_path, "--keep_thinking", "2")

    # Each request stops at the heading; twice the thinking goes on after "\n\nWait" (its trailing whitespace
    # dropped first), then a request without a stop string lets the model answer. Caps: 50 minus the words held.
    prompt = records["scurvy"]["prompt"]
    expected = [
        (prompt, 50, ["## Final Response"]),
        (prompt + "## Thinking\n\nA thought.\n\nWait", 45, ["## Final Response"]),
        (prompt + "## Thinking\n\nA thought.\n\nWait, second look.\n\nWait", 42, None),
    ]
    assert [(r["prompt"], r["max_tokens"], r.get("stop")) for r in sent["scurvy"]] == expected
    scurvy = records["scurvy"]
    thoughts = "A thought.\n\nWait, second look.\n\nWait, second look."
    assert scurvy["raw_output"] == f"## Thinking\n\n{thoughts}\n\n## Final Response\n\nThe answer is A."
    assert (scurvy["thinking_tokens"], scurvy["thinking_cut"], scurvy["thinking_extensions"]) == (8, False, 2)
    assert scurvy["completion_tokens"] == 4 + 3 + 10 and scurvy["finish_reason"] == "stop"

    # A reply that ends without the heading (the end of text) had no end of thinking to skip: one request.
    (only,) = sent["rickets"]
    assert (only["max_tokens"], only["stop"]) == (50, ["## Final Response"])
    rickets = records["rickets"]
    assert rickets["raw_output"] == "No headings here, the answer is B."
    assert (rickets["thinking_tokens"], rickets["thinking_cut"], rickets["thinking_extensions"]) == (7, False, 0)
    assert summary["settings"]["keep_thinking"] == 2 and "think_budget" not in summary["settings"]
    assert (summary["thinking"]["extended_rate"], summary["thinking"]["mean_extensions"]) == (50.0, 1.0)


def test_several_budgets_are_one_set_with_accuracy_against_the_budget(scripted, tmp_path):
    server = scripted(budget_model)
    result = evaluate(tmp_path, server.base_url, "--think_budget", "8", "2", "4")
    assert result.returncode == 0, result.stderr
    assert "run 1/3: seed 42, thinking budget 8, GPQA options as in the file" in result.stdout
    out = tmp_path / "out"
    (index_name,) = [name for name in os.listdir(out) if name.endswith("_runs.json")]
    index = json.loads((out / index_name).read_text())
    assert [(r["seed"], r["gpqa_option_seed"], r["think_budget"]) for r in index["runs"]] == [
        (42, None, 8),
        (42, None, 2),
        (42, None, 4),
    ]
    assert "think_budget" not in index["settings"]
    # Budget 2 cuts both (both answer A: 1 of 2 right), 4 cuts scurvy only (both right), 8 cuts neither (scurvy
    # answers B: 1 of 2 right). Requests: 4, 3, 2.
    assert len(server.requests) == 9
    budget_report = json.loads((out / index_name.replace(".json", "_report.json")).read_text())
    rows = {row["think_budget"]: row for row in budget_report["budgets"]}
    assert list(rows) == [2, 4, 8]
    assert [rows[b]["average_over_sources"]["paper_accuracy"]["mean"] for b in (2, 4, 8)] == [50.0, 100.0, 50.0]
    assert [rows[b]["sources"]["S"]["honest_first_match_accuracy"]["runs"] for b in (2, 4, 8)] == [
        [50.0],
        [100.0],
        [50.0],
    ]
    assert [rows[b]["thinking"]["mean_thinking_tokens"]["mean"] for b in (2, 4, 8)] == [2.0, 3.5, 4.5]
    assert [rows[b]["thinking"]["cut_rate"]["mean"] for b in (2, 4, 8)] == [100.0, 50.0, 0.0]
    table = (out / index_name.replace(".json", "_report.md")).read_text()
    assert "| 2 | 1 | 2.0 | 100.0 | 50.0 | 50.0 | 50.0 / 50.0 |" in table
    assert "| 4 | 1 | 3.5 | 50.0 | 100.0 | 100.0 | 100.0 / 100.0 |" in table
    assert (out / index_name.replace(".json", "_report.png")).read_bytes()[:4] == b"\x89PNG"

    # Each budget is a run of its own: asked again, nothing is sent; evaluation/report.py rebuilds the same report.
    again = evaluate(tmp_path, server.base_url, "--think_budget", "8", "2", "4")
    assert again.returncode == 0 and again.stdout.count("0 to ask") == 3 and len(server.requests) == 9
    before = (out / index_name.replace(".json", "_report.json")).read_text()
    assert run_script("evaluation/report.py", [out / index_name]).returncode == 0
    assert json.loads((out / index_name.replace(".json", "_report.json")).read_text()) == json.loads(before)


def test_chat_mode_is_refused_in_one_line(scripted, tmp_path):
    server = scripted(budget_model)
    for flag, value in (("--think_budget", "16"), ("--keep_thinking", "1")):
        result = evaluate(tmp_path, server.base_url, "--request_mode", "chat", flag, value)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 1 and len(lines) == 1, result.stderr
        assert lines[0].startswith(f"error: {flag} is not available with --request_mode chat")
    assert server.requests == [] and not (tmp_path / "out").exists()


def parse(*argv):
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(
        ["--model_name", "m", "--eval_file", "f"] + list(argv)
    )
    return args


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--think_budget", "0"], "--think_budget 0: a budget is 1 to --max_new_tokens - 1 (1999)"),
        (["--think_budget", "64", "--max_new_tokens", "64"], "--think_budget 64: a budget is 1 to"),
        (["--think_budget", "8", "16", "8"], "repeats a budget"),
        (["--keep_thinking", "-1"], "--keep_thinking must be 0 or more"),
    ],
)
def test_thinking_flags_refused_in_one_line(flags, message):
    with pytest.raises(InputError, match=re.escape(message)):
        check_thinking_flags(parse(*flags))
    check_thinking_flags(parse("--think_budget", "8", "16", "--keep_thinking", "2"))  # fine


def test_the_default_keeps_its_settings_and_names(tmp_path):
    eval_file = tmp_path / "eval.json"
    eval_file.write_text("{}")
    common = ["--eval_file", str(eval_file), "--model_name", str(tmp_path)]
    default = settings_of(parse(*common))
    assert not {"think_budget", "keep_thinking"} & set(default)
    assert run_key(default) == {"seed": 42, "gpqa_option_seed": None}  # so sets of seeds keep their names
    budget, keep = parse(*common, "--think_budget", "16"), parse(*common, "--keep_thinking", "2")
    assert settings_of(budget)["think_budget"] == 16 and settings_of(keep)["keep_thinking"] == 2
    assert run_key(settings_of(budget)) == {"seed": 42, "gpqa_option_seed": None, "think_budget": 16}
    stems = {output_stem(a, settings_of(a)) for a in (parse(*common), budget, keep)}
    assert len(stems) == 3


# ---- the cut itself, and the requests, without a server -------------------------------------------------------
def recorder(replies):
    """A complete() answering with the given Completions in turn; the calls are recorded."""
    calls = []

    def complete(prompt, max_tokens, stop):
        calls.append((prompt, max_tokens, stop))
        return replies[len(calls) - 1]

    return complete, calls


def test_thinking_span_counts_from_the_headings_or_the_whole_reply():
    for reply, thinking in [
        (LONG_REPLY, "first second third fourth fifth sixth."),
        ("## Final Response\n\nB", ""),
        ("I think it is B.\n\n## Final Response\n\nB", "I think it is B."),
        ("  no headings at all  ", "no headings at all"),
        ("## Thinking\n\n still going", "still going"),
    ]:
        start, end = thinking_span(reply)
        assert reply[start:end] == thinking


def test_budget_and_keep_thinking_together_and_a_server_that_ignores_stop_strings(tmp_path):
    control = ThinkingControl(AutoTokenizer.from_pretrained(word_tokenizer(tmp_path / "words")), 3, 1)
    # The first answer holds the heading and what follows (the server ignored the stop string): cut there.
    complete, calls = recorder(
        [
            Completion("## Thinking\n\nA thought.\n\n## Final Response\n\nThe answer is B.", "stop", None, 8),
            Completion(", second look.\n\n## Final Response\n\nThe answer is B.", "stop", None, 10),
            Completion("The answer is A.", "length", None, 4),
        ]
    )
    reply = control.reply(complete, "P: ", 50)
    assert calls == [
        ("P: ", 50, ["## Final Response"]),
        ("P: ## Thinking\n\nA thought.\n\nWait", 45, None),
        # 5 thinking words after the Wait, cut at 3; 50 minus the 8 words held
        ("P: ## Thinking\n\nA thought.\n\nWait,\n\n## Final Response\n\n", 42, None),
    ]
    assert reply.text == "## Thinking\n\nA thought.\n\nWait,\n\n## Final Response\n\nThe answer is A."
    assert (reply.thinking_tokens, reply.thinking_cut, reply.thinking_extensions) == (3, True, 1)
    assert (reply.finish_reason, reply.completion_tokens) == ("length", 22)


def test_the_cut_is_on_a_token_boundary_and_never_splits_a_character(tiny_models):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])  # byte-level: a Chinese character is bytes
    english = "The patient presents with fever and cough. Let me reason step by step."
    for thinking in (english, "患者发热咳嗽，考虑肺炎。The answer is A."):
        reply = f"## Thinking\n\n{thinking}\n\n## Final Response\n\nB"
        ids = tokenizer(thinking, add_special_tokens=False)["input_ids"]
        for budget in range(1, len(ids) + 2):
            kept = ThinkingControl(tokenizer, budget).cut(reply)
            if budget >= len(ids):
                assert kept is None  # within the budget: left as it is
                continue
            kept_thinking = kept[len("## Thinking\n\n") :]
            assert reply.startswith(kept) and "\ufffd" not in kept
            count = len(tokenizer(kept_thinking, add_special_tokens=False)["input_ids"])
            if thinking == english:  # what decoding the first `budget` tokens gives, and exactly that many
                assert kept_thinking == tokenizer.decode(ids[:budget]) and count == budget
            else:  # a character of 3 bytes is kept out whole when the budget ends inside it
                assert budget - 3 < count <= budget


def test_length_bins_of_hand_made_results():
    options, gold = {"A": "Vitamin C", "B": "Vitamin D"}, "A"
    # (thinking tokens, letter answered): bins end at 16, 32, 64, ... (a reply cut at 2^k ends its bin)
    replies = [(0, "A"), (16, "B"), (17, "A"), (32, "A"), (33, "B"), (64, "B"), (65, "A"), (300, "A")]
    records = []
    for tokens, letter in replies:
        output = f"## Thinking\n\n...\n\n## Final Response\n\nThe answer is {letter}."
        item = {"source": "S", "options": options, "answer_idx": gold}
        records.append(
            {
                **item,
                "output": output,
                "verdict": scoring.score_item(item, output),
                "thinking_tokens": tokens,
                "thinking_cut": tokens == 64,
                "thinking_extensions": 1 if tokens == 300 else 0,
            }
        )
    summary = report.build_report(records, {"model_name": "m", "think_budget": 64}, "HuatuoGPT-o1-8B")
    bins = [(row["tokens"], row["n"], row["honest_first_match_accuracy"]) for row in summary["thinking"]["by_length"]]
    assert bins == [
        ("0-16", 2, 50.0),
        ("17-32", 2, 100.0),
        ("33-64", 2, 0.0),
        ("65-128", 1, 100.0),
        ("257-512", 1, 100.0),
    ]
    assert [row["paper_accuracy"] for row in summary["thinking"]["by_length"]] == [50.0, 100.0, 0.0, 100.0, 100.0]
    thinking = summary["thinking"]
    assert (thinking["mean_thinking_tokens"], thinking["max_thinking_tokens"]) == (round(527 / 8, 1), 300)
    assert (thinking["cut_rate"], thinking["extended_rate"], thinking["mean_extensions"]) == (12.5, 12.5, 0.12)
    table = report.markdown_table(summary)
    assert "| 33-64 | 2 | 0.0 | 0.0 |" in table and "budget 64 tokens" in table
    # Results without thinking fields (every run without the flags) get no such section.
    plain = [{k: v for k, v in r.items() if not k.startswith("thinking")} for r in records]
    assert "thinking" not in report.build_report(plain, {"model_name": "m"}, "HuatuoGPT-o1-8B")


# ---- for real: SmolLM2 behind vLLM -----------------------------------------------------------------------------
@pytest.mark.vllm
@pytest.mark.real_model
@pytest.mark.server
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")
def test_a_budget_of_16_tokens_through_vllm_with_smollm2(smollm2, tmp_path):
    """SmolLM2 was never taught the layout: it writes no heading, so all of its reply is thinking (nothing is
    prefilled). A reply longer than 16 tokens is cut there and answered after the heading eval.py appends; a bare
    "D. Vitamin D" ends within the budget and stays as it came."""
    port, pid_file = free_port(), tmp_path / "server.pid"
    one_thread = {"OMP_NUM_THREADS": "1"}
    try:
        serve = [sys.executable, "evaluation/serve.py", "--model_path", smollm2, "--port", port,
                 "--pid_file", pid_file, "--kv_cache_gib", "1", "--timeout", "600"]  # fmt: skip
        run_command(serve, env=one_thread, check=True)
        out = tmp_path / "out"
        argv = ["--model_name", smollm2, "--eval_file", "evaluation/data/demo_eval_data.json", "--port", str(port),
                "--max_new_tokens", "64", "--think_budget", "16",
                "--output_dir", out]  # fmt: skip
        run_command([sys.executable, "evaluation/eval.py", *argv], env=one_thread, check=True)
    finally:
        if pid_file.exists():
            run_command([sys.executable, "evaluation/serve.py", "--stop", "--pid_file", pid_file])
    assert not pid_file.exists()
    (results,) = [path for path in out.glob("*.json") if not path.name.endswith("_report.json")]
    records = json.loads(results.read_text())
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    assert len(records) == 21
    for record in records:
        reply = record["raw_output"]
        start, end = thinking_span(reply)
        counted = len(tokenizer(reply[start:end], add_special_tokens=False)["input_ids"])
        assert counted == record["thinking_tokens"] <= 16, reply
        if record["thinking_cut"]:  # the reply up to its 16th thinking token, the heading, an answer
            head, final = reply.split("\n\n## Final Response\n\n", 1)
            start, _ = thinking_span(head)
            assert len(tokenizer(head[start:], add_special_tokens=False)["input_ids"]) == 16 and final.strip(), reply
        else:  # it ended within 16 tokens by itself, in one request: as it came
            assert record["finish_reason"] == "stop" and record["completion_tokens"] <= 16, reply
    assert sum(r["thinking_cut"] for r in records) >= 3, [r["raw_output"] for r in records]
    summary = json.loads(next(out.glob("*_report.json")).read_text())
    assert summary["thinking"]["max_thinking_tokens"] <= 16
