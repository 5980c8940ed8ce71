"""eval.py without a server: flag parsing, prompts (--strict_prompt, --max_tokens, --use_chat_template),
eval-file checks, resume bookkeeping, and the stale-PID guard of huatuo_o1/serving.py."""

import json
import os
import subprocess
import sys
import time

import pytest
from transformers import AutoTokenizer, HfArgumentParser

from huatuo_o1.evaluation.client import EvalArguments, PromptBuilder, load_eval_items, read_partial
from huatuo_o1.records import InputError
from huatuo_o1.serving import process_start_time, stop_from_pid_file
from tests.scripts import run_script

ITEM = {
    "question": (
        "A 7-year-old boy has cola-coloured urine two weeks after a sore throat. What is the most likely diagnosis?"
    ),
    "options": {
        "A": "Minimal change disease",
        "B": "IgA nephropathy",
        "C": "Post-streptococcal glomerulonephritis",
        "D": "Alport syndrome",
    },
    "answer_idx": "C",
}


def parse(*argv):
    (args,) = HfArgumentParser(EvalArguments).parse_args_into_dataclasses(list(argv))
    return args


def test_flags_parse_as_booleans_and_keep_the_originals_defaults():
    args = parse("--model_name", "m", "--eval_file", "f.json", "--use_chat_template", "False", "--strict_prompt")
    assert args.use_chat_template is False and args.strict_prompt is True
    args = parse("--model_name", "m", "--eval_file", "f.json", "--strict_prompt", "false")
    assert args.use_chat_template is True and args.strict_prompt is False
    assert (args.port, args.max_new_tokens, args.max_tokens, args.batch_size, args.task) == (
        30000,
        2000,
        -1,
        1024,
        "api",
    )
    assert (args.temperature, args.top_p, args.request_mode) == (0.5, 0.9, "completions")


OPTION_LIST = (
    "A. Minimal change disease\nB. IgA nephropathy\nC. Post-streptococcal glomerulonephritis\nD. Alport syndrome"
)


def test_free_and_strict_prompts_are_the_papers_text(tiny_models):
    model = tiny_models["tiny-llama"]
    free = PromptBuilder(parse("--model_name", model, "--eval_file", "x", "--use_chat_template", "False"))(ITEM)
    strict = PromptBuilder(
        parse("--model_name", model, "--eval_file", "x", "--use_chat_template", "False", "--strict_prompt")
    )(ITEM)
    assert free == "Please answer the following multiple-choice question:\n" + ITEM["question"] + "\n" + OPTION_LIST
    # The strict prompt repeats its first sentence: that is what the paper ran.
    assert strict == (
        "Please answer the following multiple-choice questions. Please answer the following multiple-choice "
        "questions, ensuring your response concludes with the correct option in the format: "
        "'The answer is A.'.\n" + ITEM["question"] + "\n" + OPTION_LIST
    )
    # Braces in a question are text, not placeholders.
    braces = {**ITEM, "question": "Which set {a, b} holds {question}?"}
    assert PromptBuilder(parse("--model_name", model, "--eval_file", "x", "--use_chat_template", "False"))(braces) == (
        "Please answer the following multiple-choice question:\nWhich set {a, b} holds {question}?\n" + OPTION_LIST
    )


def test_chat_template_on_and_off(tiny_models):
    model = tiny_models["tiny-llama"]
    plain = PromptBuilder(parse("--model_name", model, "--eval_file", "x", "--use_chat_template", "False"))(ITEM)
    templated = PromptBuilder(parse("--model_name", model, "--eval_file", "x"))(ITEM)
    assert not plain.startswith("<|")
    # The tiny Llama tokenizer does not add BOS itself, so the template's BOS is kept.
    assert (
        templated == f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{plain}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    # Chat mode leaves the template to the server.
    chat = PromptBuilder(parse("--model_name", model, "--eval_file", "x", "--request_mode", "chat"))(ITEM)
    assert chat == plain


def test_chat_template_rendered_as_the_original_client_did(tiny_models, tmp_path):
    """Plain Jinja keeps the newline after each block tag (apply_chat_template would trim it), and only
    bos_token is defined (eos_token renders empty)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}\n[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}\n{% endfor %}"
        "{% if add_generation_prompt %}\n[assistant]{% endif %}"
    )
    tokenizer.save_pretrained(tmp_path)
    prompt = PromptBuilder(parse("--model_name", str(tmp_path), "--eval_file", "x"))(ITEM)
    user = PromptBuilder(parse("--model_name", str(tmp_path), "--eval_file", "x", "--use_chat_template", "False"))(
        ITEM
    )
    assert prompt == f"<|begin_of_text|>\n[user]{user}\n\n[assistant]"
    trimmed = tokenizer.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
    )
    assert trimmed != prompt  # what we would have sent with apply_chat_template
    # transformers' own {% generation %} tag is no plain Jinja: then apply_chat_template renders it.
    tokenizer.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}>{% generation %}{{ m['content'] }}{% endgeneration %}{% endfor %}"
    )
    tokenizer.save_pretrained(tmp_path)
    assert PromptBuilder(parse("--model_name", str(tmp_path), "--eval_file", "x"))(ITEM) == f"<user>{user}"


def test_one_bos_unless_asked_for_the_originals_two(bos_adding_tokenizer):
    folder = bos_adding_tokenizer
    one = PromptBuilder(parse("--model_name", folder, "--eval_file", "x"))(ITEM)
    two = PromptBuilder(parse("--model_name", folder, "--eval_file", "x", "--keep_template_bos", "True"))(ITEM)
    assert two == "<|begin_of_text|>" + one and not one.startswith("<|begin_of_text|>")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer(two)["input_ids"]  # how a server tokenizes the text it receives
    assert ids[:2] == [tokenizer.bos_token_id] * 2 and tokenizer(one)["input_ids"].count(tokenizer.bos_token_id) == 1


@pytest.fixture
def bos_adding_tokenizer(tiny_models, tmp_path):
    """The tiny Llama tokenizer made to add BOS itself, as Llama-3's does."""
    from tokenizers import processors

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)("x")["input_ids"][0] == tokenizer.bos_token_id
    return str(tmp_path)


def test_max_tokens_cuts_only_the_question(tiny_models):
    model = tiny_models["tiny-llama"]
    tokenizer = AutoTokenizer.from_pretrained(model)
    long_item = {**ITEM, "question": "The patient presents with fever and cough. " * 40 + ITEM["question"]}
    args = parse("--model_name", model, "--eval_file", "x", "--use_chat_template", "False", "--max_tokens", "120")
    full = PromptBuilder(parse("--model_name", model, "--eval_file", "x", "--use_chat_template", "False"))(long_item)
    cut = PromptBuilder(args)(long_item)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    assert count(full) > 120 >= count(cut) > 100
    assert cut.startswith("Please answer the following multiple-choice question:\nThe patient presents")
    assert cut.endswith("D. Alport syndrome")
    assert "most likely diagnosis" not in cut  # the end of the long question went
    # A limit below the instruction and options: the question goes entirely, nothing else does.
    tight = PromptBuilder(
        parse("--model_name", model, "--eval_file", "x", "--use_chat_template", "False", "--max_tokens", "10")
    )(long_item)
    assert tight == (
        "Please answer the following multiple-choice question:\n\nA. Minimal change disease\nB. IgA nephropathy\n"
        "C. Post-streptococcal glomerulonephritis\nD. Alport syndrome"
    )
    # Prompts within the limit are left alone.
    short = PromptBuilder(parse("--model_name", model, "--eval_file", "x", "--use_chat_template", "False"))(ITEM)
    roomy = parse(
        "--model_name", model, "--eval_file", "x", "--use_chat_template", "False", "--max_tokens", str(count(short))
    )
    assert PromptBuilder(roomy)(ITEM) == short


def test_eval_file_shapes_and_errors(tmp_path):
    as_dict = tmp_path / "d.json"
    as_dict.write_text(json.dumps({"MedQA_USLME_test": [ITEM, ITEM], "PubMedQA": [ITEM]}))
    items = load_eval_items(str(as_dict))
    assert [i["id"] for i in items] == ["MedQA_USLME_test/0", "MedQA_USLME_test/1", "PubMedQA/0"]
    assert [i["id"] for i in load_eval_items(str(as_dict), max_items_per_source=1)] == [
        "MedQA_USLME_test/0",
        "PubMedQA/0",
    ]
    as_list = tmp_path / "l.json"
    as_list.write_text(json.dumps([{**ITEM, "source": "S"}, ITEM]))
    assert [i["source"] for i in load_eval_items(str(as_list))] == ["S", "eval"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"MedQA_USLME_test": [ITEM, {**ITEM, "answer_idx": "E"}]}))
    with pytest.raises(InputError, match=r"bad.json: source 'MedQA_USLME_test', item 1: answer_idx 'E'"):
        load_eval_items(str(bad))
    bad.write_text(json.dumps([{"question": "q", "answer_idx": "A"}]))
    with pytest.raises(InputError, match="item 0 lacks 'options'"):
        load_eval_items(str(bad))


def test_partial_file_resume_rules(tmp_path):
    path = tmp_path / "run.partial.jsonl"
    settings = {"model_name": "m", "seed": 1}
    path.write_text(
        json.dumps({"settings": settings})
        + "\n"
        + json.dumps({"id": "S/0", "output": "x"})
        + "\n"
        + '{"id": "S/1", "out'
    )
    assert read_partial(str(path), settings) == {"S/0": {"id": "S/0", "output": "x"}}  # the cut line is asked again
    with pytest.raises(InputError, match="other settings"):
        read_partial(str(path), {**settings, "seed": 2})


def test_stale_pid_file_never_signals_a_recycled_pid(tmp_path):
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    bystander = subprocess.Popen(command)
    try:
        pid_file = tmp_path / "server.pid"
        started = process_start_time(bystander.pid)
        record = {"pid": bystander.pid, "start_time": str(int(started) - 1), "command": command}
        pid_file.write_text(json.dumps(record))  # our server was another process, started a tick earlier
        assert stop_from_pid_file(str(pid_file)) == "gone"
        time.sleep(0.2)
        assert bystander.poll() is None and not os.path.exists(pid_file)
    finally:
        bystander.kill()
        bystander.wait()


def test_clear_errors_without_file_or_server(tiny_models, tmp_path, repo_root):
    from huatuo_o1.serving import free_port

    common = ["--model_name", tiny_models["tiny-llama"], "--output_dir", str(tmp_path)]
    result = run_script("evaluation/eval.py", [*common, "--eval_file", "nope.json"])
    assert result.returncode == 1 and result.stderr.strip().startswith("error: nope.json: no such file")
    result = run_script(
        "evaluation/eval.py",
        [*common, "--eval_file", f"{repo_root}/evaluation/data/demo_eval_data.json", "--port", str(free_port())],
    )
    assert result.returncode == 1 and "error: no server answers at http://127.0.0.1:" in result.stderr
    assert os.listdir(tmp_path) == []  # no partial file for a run that never started
