"""SFT_stage1.py: labels, batching, training, checkpoints, resume, and a 2-process ZeRO-3 run on CPU."""

import importlib.util
import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorWithFlattening

from huatuo_o1 import manifests, models
from huatuo_o1.models import load_chat_tokenizer
from huatuo_o1.records import InputError, load_records, read_json
from huatuo_o1.serving import free_port, listening_pids
from huatuo_o1.sft import (
    GROUP_BATCHES,
    EpochSampler,
    build_examples,
    next_token_loss,
    pad_collate,
    prompt_completion_rows,
    stop_token_ids,
)
from tests.damage import DAMAGES, damage
from tests.scripts import accelerate_launch, launch_ok, reset_accelerate, run_launches, run_script

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_ROWS = load_records(os.path.join(REPO_ROOT, "data", "demo_sft.json"))


def write_rows(folder, rows, name="sft.json"):
    path = os.path.join(folder, name)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return path


def run_ok(*flags):
    """SFT_stage1.py as a user runs it, whole, in this process, on one torch thread whatever the machine's: the
    learned figures the tests bound then do not move with the thread count (it changes the order of sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_script("SFT_stage1.py", flags, check=True)
    finally:
        torch.set_num_threads(threads)
        reset_accelerate()  # leave no accelerate state to the next run


def main_exit_message(flags):
    """Run SFT_stage1.py in this process, expecting it to stop on bad input; its one-line message."""
    try:
        result = run_script("SFT_stage1.py", flags)
    finally:
        reset_accelerate()  # leave no accelerate state to other tests
    assert result.returncode == 1 and "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def common_flags(model, data, out, **overrides):
    flags = {
        "model_path": model,
        "data_path": data,
        "output_dir": out,
        "log_dir": os.path.join(out, "logs"),
        "n_epochs": 2,
        "train_bsz_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "learning_rate": 1e-3,
        "max_seq_len": 2048,
        "gradient_checkpointing": False,
    }
    flags.update(overrides)
    return [item for key, value in flags.items() for item in (f"--{key}", value)]


def read_summary(out, experiment="sft_stage1"):
    with open(os.path.join(out, experiment, "training_summary.json"), encoding="utf-8") as f:
        return json.load(f)


def checkpoint_names(out, experiment="sft_stage1"):
    return sorted(
        (n for n in os.listdir(os.path.join(out, experiment)) if n.startswith("checkpoint-")),
        key=lambda n: int(n.split("-")[1]),
    )


def max_weight_change(model_a, model_b):
    b = dict(model_b.named_parameters())
    return max((p.float() - b[n].float()).abs().max().item() for n, p in model_a.named_parameters())


# --------------------------------------------------------------------------------------------- labels

# Rows in the released SFT set's style (our own text): a long Complex_CoT with blank lines inside,
# Responses with trailing spaces and newlines or a leading space, a Question ending in a newline.
REAL_STYLE_ROWS = [
    {
        "Question": "A 45-year-old man has crushing chest pain and ST elevation in leads II, III and aVF. "
        "Which coronary artery is most likely occluded?\n",
        "Complex_CoT": (
            "Okay, so this man has chest pain and ST elevation in II, III and aVF.\n\nHmm, those leads "
            "look at "
            "the inferior wall of the heart.\nThe inferior wall is usually supplied by the right coronary artery, "
            "since most hearts are right dominant.\n\nWait, could it be the left circumflex? It can give inferior "
            "changes too, but that is less common.\nAlso, nothing here points to a left-dominant system.\n\n"
            "So the right coronary artery is the best fit."
        ),
        "Response": (
            "The most likely occluded vessel is the **right coronary artery**. ST elevation in II, III "
            "and aVF marks "
            "an inferior infarction, and the inferior wall is supplied by the right coronary artery in most "
            "people.  \n\n"
        ),
    },
    {
        "Question": (
            "Which drug is preferred first for high blood pressure in a diabetic patient with protein in the urine?"
        ),
        "Complex_CoT": (
            "\nAlright, protein in the urine of a diabetic patient means the kidneys are already "
            "suffering.\n"
            "Oh, and drugs that block the renin-angiotensin system lower the pressure inside the glomerulus.\n"
            "An ACE inhibitor such as lisinopril does exactly that.\nIf it causes a cough, an angiotensin receptor "
            "blocker is the usual swap.\n"
        ),
        "Response": (
            " An ACE inhibitor (for example lisinopril) is preferred: it lowers blood pressure and "
            "protects the kidneys.\n"
        ),
    },
    {
        "Question": (
            "  A toddler has a barking cough and inspiratory stridor after a cold. What is the most likely cause?  "
        ),
        "Complex_CoT": (
            "Let me think. A barking cough with stridor after a cold sounds like croup.\n\nCroup is "
            "most often "
            "caused by parainfluenza virus.\nRSV causes bronchiolitis instead, with wheeze rather than stridor.  "
        ),
        "Response": (
            "Croup, most often due to **parainfluenza virus**.\n\n- barking cough\n- inspiratory stridor\n\t\n"
        ),
    },
    {
        "Question": "What is the first-line treatment for anaphylaxis?",
        "Complex_CoT": (
            "Anaphylaxis is a life-threatening allergic reaction.\nThe drug that reverses it fastest "
            "is adrenaline "
            "given into the muscle.\nAntihistamines and steroids only help later."
        ),
        "Response": "Intramuscular adrenaline (epinephrine) is the first-line treatment.",
    },
]


@pytest.fixture(scope="module")
def eos_is_pad_model(tiny_models, tmp_path_factory):
    """tiny-qwen2 with pad == eos == <|im_end|>, the layout of SmolLM2-135M-Instruct."""
    folder = str(tmp_path_factory.mktemp("eos_is_pad"))
    for name in os.listdir(tiny_models["tiny-qwen2"]):
        shutil.copy(os.path.join(tiny_models["tiny-qwen2"], name), folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    return folder


def answer_text(row):
    return f"## Thinking\n\n{row['Complex_CoT']}\n\n## Final Response\n\n{row['Response']}"


def originals_tokens(tokenizer, row, layout):
    """input_ids and labels as the original built them, assembled here piece by piece from the facts:
    the chat rendered by the model's template from the stored texts (Llama-3's template trims each
    message, ChatML keeps it whole), one bos, the whole chat tokenized at once, labels -100 on as
    many leading tokens as the prompt with its generation prompt has, and every later token learned.
    Added tokens split the text before BPE runs, so the pieces between them are tokenized alone."""
    special = tokenizer.convert_tokens_to_ids

    def text(piece):
        return tokenizer(piece, add_special_tokens=False)["input_ids"]

    answer = answer_text(row)
    if layout == "llama3":
        start, end_header, eot = special(["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"])
        head = [
            tokenizer.bos_token_id,
            start,
            *text("user"),
            end_header,
            *text("\n\n" + row["Question"].strip()),
            eot,
            start,
            *text("assistant"),
            end_header,
        ]
        prompt = head + text("\n\n")
        chat = head + text("\n\n" + answer.strip()) + [eot]
    else:  # ChatML, no system turn in this template
        im_start, im_end = special(["<|im_start|>", "<|im_end|>"])
        head = [im_start, *text("user\n" + row["Question"]), im_end, *text("\n"), im_start]
        prompt = head + text("assistant\n")
        chat = head + text("assistant\n" + answer) + [im_end] + text("\n")
    return chat, [-100] * len(prompt) + chat[len(prompt) :]


@pytest.mark.parametrize("model, layout", [("tiny-llama", "llama3"), ("tiny-qwen2", "chatml")])
def test_tokens_and_labels_equal_the_originals_for_rows_as_stored(tiny_models, model, layout):
    tokenizer = load_chat_tokenizer(tiny_models[model])
    examples, n_overlong = build_examples(REAL_STYLE_ROWS, tokenizer, 8192, "drop", "real-style", show_progress=False)
    assert n_overlong == 0 and len(examples) == len(REAL_STYLE_ROWS)
    for row, example in zip(REAL_STYLE_ROWS, examples):
        ids, labels = originals_tokens(tokenizer, row, layout)
        assert example["input_ids"] == ids
        assert example["labels"] == labels
        learned = [t for t, label in zip(ids, labels) if label != -100]
        if layout == "llama3":
            assert learned[-1] == tokenizer.convert_tokens_to_ids("<|eot_id|>")
        else:  # the original also learned ChatML's newline after <|im_end|>
            assert tokenizer.decode(learned[-2:]) == "<|im_end|>\n"
        assert tokenizer.decode(learned).startswith("## Thinking\n\n")

    # The test can fail: stripping the stored texts (what this script did before) changes the tokens.
    # ChatML keeps every message whole: rows 0, 1 and 2 change. Llama-3's template trims each message
    # itself, so there only whitespace inside the assistant turn counts (edges of Complex_CoT, the
    # start of Response): rows 1 and 2; row 0's Question newline and trailing spaces go either way.
    stripped = [{k: v.strip() for k, v in row.items()} for row in REAL_STYLE_ROWS]
    before, _ = build_examples(stripped, tokenizer, 8192, "drop", "stripped", show_progress=False)
    changed = [i for i, (a, b) in enumerate(zip(before, examples)) if a["input_ids"] != b["input_ids"]]
    assert changed == ([1, 2] if layout == "llama3" else [0, 1, 2])


def test_trl_records_render_the_same_chat_as_our_examples(tiny_models):
    tokenizer = load_chat_tokenizer(tiny_models["tiny-qwen2"])
    records = prompt_completion_rows(DEMO_ROWS)
    ours, _ = build_examples(DEMO_ROWS, tokenizer, 10**6, "drop", "demo", show_progress=False)
    assert len(records) == len(DEMO_ROWS)
    for record, example in zip(records, ours):
        assert [m["role"] for m in record["prompt"] + record["completion"]] == ["user", "assistant"]
        chat = tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=False)
        assert tokenizer(chat, add_special_tokens=False)["input_ids"] == example["input_ids"]


def test_rows_that_fit_are_kept_whole_and_longer_ones_are_dropped_by_default(tiny_models):
    tokenizer = load_chat_tokenizer(tiny_models["tiny-llama"])
    row = REAL_STYLE_ROWS[0]
    (example,), _ = build_examples([row], tokenizer, 8192, "drop", "rows", show_progress=False)
    n = len(example["input_ids"])
    (fits,), n_overlong = build_examples([row], tokenizer, n, "drop", "rows", show_progress=False)
    assert n_overlong == 0 and fits == example
    kept, n_overlong = build_examples([row], tokenizer, n - 1, "drop", "rows", show_progress=False)
    assert n_overlong == 1 and kept == []


def test_padded_batches_mask_padding_and_keep_the_eos_label_when_pad_is_eos(eos_is_pad_model):
    tokenizer = load_chat_tokenizer(eos_is_pad_model)
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    examples, _ = build_examples(REAL_STYLE_ROWS[:3], tokenizer, 8192, "drop", "rows", show_progress=False)
    for row, example in zip(REAL_STYLE_ROWS, examples):
        assert (example["input_ids"], example["labels"]) == originals_tokens(tokenizer, row, "chatml")

    # Padded batches (the original scheme): padding masked everywhere, the eos inside each example
    # still learned although it has the pad id.
    batch = pad_collate(tokenizer.pad_token_id)(examples)
    eos = tokenizer.eos_token_id
    for i, example in enumerate(examples):
        n = len(example["input_ids"])
        assert batch["labels"][i, :n].tolist() == example["labels"]
        assert (batch["labels"][i, n:] == -100).all() and (batch["attention_mask"][i, n:] == 0).all()
        assert (batch["attention_mask"][i, :n] == 1).all()
        assert (batch["labels"][i] == eos).sum().item() == 1
    # Padding-free batches: the same labels, back to back, positions restarting per example.
    flat = DataCollatorWithFlattening()(examples)
    assert flat["labels"][0].tolist() == [label for e in examples for label in e["labels"]]
    assert flat["position_ids"][0].tolist() == [p for e in examples for p in range(len(e["input_ids"]))]


def test_llama3_layout_when_the_tokenizer_has_no_chat_template(tiny_models, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    if os.path.exists(tmp_path / "chat_template.jinja"):
        os.remove(tmp_path / "chat_template.jinja")
    assert not AutoTokenizer.from_pretrained(tmp_path).chat_template

    tokenizer = load_chat_tokenizer(str(tmp_path))
    row = REAL_STYLE_ROWS[0]
    (example,), _ = build_examples([row], tokenizer, 8192, "drop", "rows", show_progress=False)
    text = tokenizer.decode(example["input_ids"])
    assert text == (
        f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{row['Question'].strip()}<|eot_id|>"
        f"<|start_header_id|>assistant<|end_header_id|>\n\n{answer_text(row).strip()}<|eot_id|>"
    )
    assert (example["input_ids"], example["labels"]) == originals_tokens(tokenizer, row, "llama3")

    # A base model's eos (<|end_of_text|>) is not where the Llama-3 turn ends: generation must stop at both.
    end_of_text, eot = tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    assert stop_token_ids(tokenizer, example, end_of_text) == [end_of_text, eot]
    assert stop_token_ids(tokenizer, example, [eot]) == [eot]
    text_end = {"input_ids": example["input_ids"][:-1], "labels": example["labels"][:-1]}  # ends on a plain word piece
    assert stop_token_ids(tokenizer, text_end, end_of_text) == [end_of_text]


def test_chatml_turns_stop_at_the_end_of_turn_token_not_the_newline_after_it(eos_is_pad_model):
    tokenizer = load_chat_tokenizer(eos_is_pad_model)
    (example,), _ = build_examples(REAL_STYLE_ROWS[:1], tokenizer, 8192, "drop", "rows", show_progress=False)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert stop_token_ids(tokenizer, example, endoftext) == [endoftext, im_end]


def test_overlong_examples_are_dropped_cut_at_the_answer_end_or_cut_at_the_start(tiny_models):
    tokenizer = load_chat_tokenizer(tiny_models["tiny-llama"])
    rows = DEMO_ROWS[:4]
    full, _ = build_examples(rows, tokenizer, 100000, "drop", "demo", show_progress=False)
    lengths = [len(e["input_ids"]) for e in full]
    limit = sorted(lengths)[1]  # two rows fit, two are longer
    n_long = sum(n > limit for n in lengths)

    kept, n_overlong = build_examples(rows, tokenizer, limit, "drop", "demo", show_progress=False)
    assert n_overlong == n_long and len(kept) == len(rows) - n_long
    assert [e["input_ids"] for e in kept] == [e["input_ids"] for e in full if len(e["input_ids"]) <= limit]

    cut, n_overlong = build_examples(rows, tokenizer, limit, "truncate", "demo", show_progress=False)
    assert n_overlong == n_long and len(cut) == len(rows)
    for whole, part in zip(full, cut):
        assert len(part["input_ids"]) == min(len(whole["input_ids"]), limit)
        assert part["input_ids"] == whole["input_ids"][:limit]
        n_prompt = whole["labels"].index(next(label for label in whole["labels"] if label != -100))
        assert part["labels"][:n_prompt] == [-100] * n_prompt  # the whole question is kept, still masked

    last, n_overlong = build_examples(rows, tokenizer, limit, "keep_last", "demo", show_progress=False)
    assert n_overlong == n_long and len(last) == len(rows)
    for whole, part in zip(full, last):  # the original's cut: the last max_seq_len tokens and their labels
        assert part["input_ids"] == whole["input_ids"][-limit:] and part["labels"] == whole["labels"][-limit:]
    assert (
        sum(part["input_ids"][0] != tokenizer.bos_token_id for part in last) == n_long
    )  # the question's start is lost


def test_a_row_without_complex_cot_names_the_row(tiny_models, tmp_path):
    rows = [dict(r) for r in DEMO_ROWS[:3]]
    del rows[1]["Complex_CoT"]
    tokenizer = load_chat_tokenizer(tiny_models["tiny-llama"])
    with pytest.raises(InputError, match=r"bad\.json: row 1 lacks the field 'Complex_CoT'"):
        build_examples(rows, tokenizer, 8192, "drop", "bad.json", show_progress=False)

    data = write_rows(str(tmp_path), rows, "bad.json")
    message = main_exit_message(common_flags(tiny_models["tiny-llama"], data, str(tmp_path / "out")))
    assert message.startswith("error: ") and message.endswith(
        "bad.json: row 1 lacks the field 'Complex_CoT' (SFT rows need Question, Complex_CoT, Response)"
    )


# --------------------------------------------------------------------------------------------- batching


def test_padding_free_batches_give_each_example_its_own_attention(tiny_models):
    tokenizer = load_chat_tokenizer(tiny_models["tiny-llama"])
    examples, _ = build_examples(DEMO_ROWS[:3], tokenizer, 8192, "drop", "demo", show_progress=False)
    examples = [{k: v[:n] for k, v in e.items()} for e, n in zip(examples, (120, 80, 150))]
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-llama"], attn_implementation="sdpa").eval()
    flat = DataCollatorWithFlattening()(examples)
    with torch.no_grad():
        # use_cache=False as in training: with a cache transformers does not look for packed sequences
        packed = model(input_ids=flat["input_ids"], position_ids=flat["position_ids"], use_cache=False).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples])
        leaking = model(input_ids=flat["input_ids"], use_cache=False).logits[
            0
        ]  # one long causal sequence, for contrast
    assert torch.allclose(packed, alone, atol=1e-4)
    assert not torch.allclose(leaking[120:], alone[120:], atol=1e-2)


def test_flash_attention_is_chosen_only_where_the_model_computes_in_half_precision(monkeypatch):
    """A GPU with flash-attn installed: FlashAttention-2 has no float32 kernel, so a float32 run (no mixed precision)
    gets sdpa instead of failing at its first forward pass."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "flash_attn" else real_find_spec(name, *a)
    )
    assert models.attn_implementation(half_precision=True) == "flash_attention_2"
    assert models.attn_implementation(half_precision=False) == "sdpa"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.attn_implementation(half_precision=True) == "sdpa"


def test_padded_and_padding_free_batches_give_the_same_loss(tiny_models):
    tokenizer = load_chat_tokenizer(tiny_models["tiny-llama"])
    examples, _ = build_examples(DEMO_ROWS[:3], tokenizer, 8192, "drop", "demo", show_progress=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-llama"], attn_implementation="sdpa").eval()
    with torch.no_grad():
        padded = next_token_loss(model, pad_collate(tokenizer.pad_token_id)(examples))
        flat = next_token_loss(model, DataCollatorWithFlattening()(examples))
    n_learned = sum(label != -100 for e in examples for label in e["labels"])
    assert padded[2].item() == flat[2].item() == n_learned
    assert padded[1].item() == flat[1].item()
    assert flat[0].item() == pytest.approx(padded[0].item(), abs=1e-5)
    assert 5.0 < flat[0].item() < 7.0  # a random model over a 512-token vocabulary: about ln(512) = 6.2


def test_epoch_sampler_visits_every_example_once_and_groups_lengths():
    lengths = [int(50 + 900 * ((i * 7919) % 1000) / 1000) for i in range(640)]
    random_order = list(EpochSampler(lengths, seed=1, batch_size=8))
    grouped = list(EpochSampler(lengths, seed=1, batch_size=8, group_size=8 * GROUP_BATCHES))
    assert sorted(random_order) == sorted(grouped) == list(range(640))
    next_epoch = EpochSampler(lengths, seed=1, batch_size=8, group_size=8 * GROUP_BATCHES)
    next_epoch.set_epoch(1)
    assert list(next_epoch) != grouped and sorted(next_epoch) == list(range(640))

    def real_share(order):
        batches = [order[i : i + 8] for i in range(0, len(order), 8)]
        return sum(lengths[i] for i in order) / sum(8 * max(lengths[i] for i in b) for b in batches)

    assert real_share(grouped) >= 0.98 > real_share(random_order)


# --------------------------------------------------------------------------------------------- training


def test_training_lowers_the_loss_saves_loadable_models_and_rotates_them(tiny_models, tmp_path):
    model_path = tiny_models["tiny-qwen2"]
    data = write_rows(str(tmp_path), DEMO_ROWS[:2] * 4)  # 8 examples, batch 2, 3 epochs: 12 steps
    out = str(tmp_path / "out")
    # saves at steps 3, 4 (epoch end), 6, 8, 9, 12; --max_ckpts 2 keeps 9 and 12
    proc = run_ok(
        *common_flags(
            model_path,
            data,
            out,
            n_epochs=3,
            learning_rate=1e-2,
            save_steps=3,
            max_ckpts=2,
            gradient_checkpointing=True,
            batching="padding_free",
        )
    )
    summary = read_summary(out)
    assert summary["optimizer_steps"] == 12 and summary["finished"]
    # A random 2-layer model starts at ln(vocab) ~ 6.2 and reaches ~4.3 in these 12 steps. Last/first loss over
    # seeds 1, 2, 3, 42: 0.699, 0.707, 0.703, 0.687 (the same with 1 and 2 threads): the bound keeps 0.09 above the
    # worst. The token accuracy is no such signal here: its last-minus-first step ranged from 0.002 to 0.09 over
    # those seeds, so it is only checked to be a share.
    assert summary["last_loss"] < 0.8 * summary["first_loss"], summary["history"]
    assert [h["step"] for h in summary["history"]] == list(range(1, 13))
    assert all(0.0 <= h["token_accuracy"] <= 1.0 for h in summary["history"])
    assert summary["real_tokens_this_run"] == summary["processed_tokens_this_run"]  # padding-free
    # the loop's time leaves the 6 checkpoint saves out; the rates are the tokens over that time
    throughput = summary["throughput"]
    assert 0 < throughput["after_first_step"]["seconds"] < throughput["seconds"]
    assert throughput["real_tokens_per_second"] == throughput["processed_tokens_per_second"]
    assert throughput["real_tokens_per_second"] * throughput["seconds"] == pytest.approx(
        summary["real_tokens_this_run"], rel=1e-3
    )
    assert summary["final_checkpoint"] == os.path.join(out, "sft_stage1", "checkpoint-12")
    assert f"final checkpoint: {summary['final_checkpoint']}" in proc.stdout

    trained = AutoModelForCausalLM.from_pretrained(summary["final_checkpoint"])
    original = AutoModelForCausalLM.from_pretrained(model_path)
    assert max_weight_change(trained, original) > 1e-3
    tokenizer = AutoTokenizer.from_pretrained(summary["final_checkpoint"])
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": DEMO_ROWS[0]["Question"]}], add_generation_prompt=True, return_tensors="pt"
    )
    generated = trained.generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]
    run_dir = os.path.join(out, "sft_stage1")
    assert checkpoint_names(out) == ["checkpoint-9", "checkpoint-12"]
    assert not os.path.exists(os.path.join(run_dir, "checkpoint-9", "training_state"))  # only the newest keeps it
    assert os.path.isdir(os.path.join(run_dir, "checkpoint-12", "training_state"))
    assert not [n for n in os.listdir(run_dir) if n.endswith(".tmp")]
    with open(os.path.join(run_dir, "checkpoint-9", "trainer_state.json"), encoding="utf-8") as f:
        assert json.load(f)["global_step"] == 9
    older = AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "checkpoint-9"))
    assert 0 < max_weight_change(older, trained)
    # the log file has one line per optimizer step
    with open(os.path.join(out, "logs", "sft_stage1.jsonl"), encoding="utf-8") as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, 13))


def test_resume_continues_at_the_right_step_with_the_same_result(tiny_models, tmp_path):
    data = write_rows(str(tmp_path), DEMO_ROWS)  # 8 examples, batch 2, accumulation 2: 2 steps per epoch
    flags = dict(n_epochs=2, gradient_accumulation_steps=2, warmup_rates=0.25, max_seq_len=256, overlong="truncate")
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    run_ok(*common_flags(tiny_models["tiny-llama"], data, straight, **flags))
    run_ok(*common_flags(tiny_models["tiny-llama"], data, resumed, max_steps=1, **flags))  # stops mid-epoch
    assert read_summary(resumed)["optimizer_steps"] == 1 and not read_summary(resumed)["finished"]
    # the rerun continues from checkpoint-1 and ends where the straight run ended
    proc = run_ok(*common_flags(tiny_models["tiny-llama"], data, resumed, **flags))
    assert "at optimizer step 1 (epoch 0)" in proc.stdout

    expected, got = read_summary(straight), read_summary(resumed)
    assert got["optimizer_steps"] == expected["optimizer_steps"] == 4 and got["finished"]
    assert [h["step"] for h in got["history"]] == [1, 2, 3, 4]
    for a, b in zip(expected["history"], got["history"]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4) and a["lr"] == pytest.approx(b["lr"], rel=1e-6)
    final_a = AutoModelForCausalLM.from_pretrained(expected["final_checkpoint"])
    final_b = AutoModelForCausalLM.from_pretrained(got["final_checkpoint"])
    assert max_weight_change(final_a, final_b) < 1e-5
    original = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-llama"])
    assert max_weight_change(final_a, original) > 1e-3


def folder_bytes(folder):
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.join(root, name)] = f.read()
    return found


def test_a_rerun_with_other_data_is_refused_the_same_one_skipped_and_resume_false_starts_afresh(
    tiny_models, tmp_path, one_thread_fresh_accelerate
):
    first = write_rows(str(tmp_path), DEMO_ROWS[:2], "a.json")
    other = write_rows(str(tmp_path), DEMO_ROWS[2:4], "b.json")
    out, model = str(tmp_path / "out"), tiny_models["tiny-qwen2"]

    def sft(data, **overrides):
        try:
            return run_script("SFT_stage1.py", common_flags(model, data, out, n_epochs=1, **overrides))
        finally:
            reset_accelerate()

    assert sft(first).returncode == 0 and checkpoint_names(out) == ["checkpoint-1"]
    finished = folder_bytes(out)
    # new data into the finished folder: before, it trained nothing and exited 0
    result = sft(other)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    run_dir = os.path.join(out, "sft_stage1")
    assert lines[0].startswith(f"error: {run_dir} holds a run made with other inputs (the data)")
    assert "--resume False to start afresh" in lines[0] and "another --output_dir" in lines[0]
    result = sft(first, learning_rate=2e-3)
    assert result.returncode == 1 and "(learning_rate 0.001 -> 0.002)" in result.stderr
    assert folder_bytes(out) == finished
    # the same inputs again: nothing to do, nothing touched
    result = sft(first)
    assert result.returncode == 0 and "holds a finished run of these inputs" in result.stdout
    assert folder_bytes(out) == finished
    # starting afresh on the new data, as the message says
    result = sft(other, resume=False)
    assert result.returncode == 0 and "removing the 1 checkpoint(s) of the earlier run" in result.stdout
    assert checkpoint_names(out) == ["checkpoint-1"] and read_summary(out)["finished"]
    trained = os.path.join(out, "sft_stage1", "checkpoint-1", "model.safetensors")
    assert folder_bytes(out)[trained] != finished[trained]


@pytest.fixture(scope="module")
def finished_sft(tiny_models, tmp_path_factory):
    """A finished SFT run (4 rows, batch 2, 2 epochs: checkpoint-2 and checkpoint-4, only the newest with training
    state) and its flags; the tests damage copies of it."""
    folder = tmp_path_factory.mktemp("finished_sft")
    data = write_rows(str(folder), DEMO_ROWS[:4])
    flags = dict(n_epochs=2, max_seq_len=512)
    run_ok(*common_flags(tiny_models["tiny-qwen2"], data, str(folder / "out"), **flags))
    return str(folder / "out"), data, flags


def sft_again(tiny_models, finished_sft, tmp_path, *extra):
    """A copy of the finished run, and SFT_stage1.py run again over it with the same inputs (+ extra flags)."""
    finished, data, flags = finished_sft
    out = str(tmp_path / "out")
    shutil.copytree(finished, out)

    def rerun():
        try:
            return run_script("SFT_stage1.py", common_flags(tiny_models["tiny-qwen2"], data, out, **flags) + [*extra])
        finally:
            reset_accelerate()

    return os.path.join(out, "sft_stage1"), rerun


@pytest.mark.parametrize("how", DAMAGES)
def test_a_finished_run_whose_final_checkpoint_is_damaged_never_reports_nothing_to_do(
    tiny_models, finished_sft, tmp_path, how
):
    run_dir, rerun = sft_again(tiny_models, finished_sft, tmp_path)
    assert checkpoint_names(os.path.dirname(run_dir)) == ["checkpoint-2", "checkpoint-4"]
    weights = os.path.join(run_dir, "checkpoint-4", "model.safetensors")
    reason = damage(weights, how)
    before = folder_bytes(run_dir)
    result = rerun()
    # before: "a finished run of these inputs: nothing to do", exit 0, over weights that do not load. checkpoint-2
    # matches its manifest but lost its training state when checkpoint-4 was saved: nothing to resume, one line
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0] == (
        f"error: {weights} does not match its manifest {reason}; {run_dir}/checkpoint-2, the newest checkpoint that "
        "matches its manifest, has no training state to resume from (only the newest checkpoint keeps it): pass "
        "--resume False to start afresh (the checkpoints are removed)"
    )
    assert "nothing to do" not in result.stdout and folder_bytes(run_dir) == before


def test_sizes_only_skips_the_digests_but_catches_a_cut_file_and_no_manifest_is_taken_as_it_is(
    tiny_models, finished_sft, tmp_path
):
    run_dir, rerun = sft_again(tiny_models, finished_sft, tmp_path, "--verify_checkpoints", "sizes")
    newest = os.path.join(run_dir, "checkpoint-4")
    damage(os.path.join(newest, "model.safetensors"), "flipped")
    result = rerun()  # the size is right: not checked further
    assert result.returncode == 0 and "holds a finished run of these inputs" in result.stdout
    optimizer_state = next(
        os.path.join(root, name)
        for root, _, files in os.walk(os.path.join(newest, "training_state"))
        for name in files
    )
    reason = damage(optimizer_state, "truncated")
    result = rerun()
    assert result.returncode == 1 and f"{optimizer_state} does not match its manifest {reason}" in result.stderr
    # written before manifests (or by another tool): as before this change, its files are not checked
    os.remove(os.path.join(newest, "manifest.json"))
    result = rerun()
    assert result.returncode == 0 and "holds a finished run of these inputs" in result.stdout


@pytest.mark.parametrize("how", DAMAGES)
def test_an_interrupted_run_whose_only_checkpoint_is_damaged_stops_naming_the_file(tiny_models, tmp_path, how):
    data = write_rows(str(tmp_path), DEMO_ROWS[:4])
    out, model = str(tmp_path / "out"), tiny_models["tiny-qwen2"]
    run_ok(*common_flags(model, data, out, max_seq_len=512, max_steps=1))  # stopped after checkpoint-1
    run_dir = os.path.join(out, "sft_stage1")
    trainer_state = os.path.join(run_dir, "checkpoint-1", "trainer_state.json")
    reason = damage(trainer_state, how)
    result = run_script("SFT_stage1.py", common_flags(model, data, out, max_seq_len=512))
    reset_accelerate()
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0] == (
        f"error: {trainer_state} does not match its manifest {reason}; no checkpoint of {run_dir} matches its "
        "manifest: pass --resume False to start afresh (the checkpoints are removed)"
    )


def zero3_flags(tiny_models, data, out):
    return common_flags(
        tiny_models["tiny-llama"], data, out, n_epochs=2, learning_rate=3e-3, gradient_checkpointing=True
    )


@pytest.fixture(scope="module")
def zero3_data(tmp_path_factory):
    # 16 examples: 2 processes x batch 2 -> 4 steps per epoch
    return write_rows(str(tmp_path_factory.mktemp("sft_zero3")), DEMO_ROWS * 2)


@pytest.fixture(scope="module")
def zero3_one_machine_two_processes(tiny_models, zero3_data, tmp_path_factory):
    """The output folder of SFT under DeepSpeed ZeRO-3 on CPU (gloo), 1 machine x 2 processes (run once, for the
    tests of this run and of the 2-machine run compared with it)."""
    out = str(tmp_path_factory.mktemp("sft_zero3_1x2"))
    launch_ok([accelerate_launch("SFT_stage1.py", zero3_flags(tiny_models, zero3_data, out), free_port())])
    return out


@pytest.mark.multiprocess
def test_two_process_deepspeed_zero3_run_on_cpu(tiny_models, zero3_one_machine_two_processes):
    out = zero3_one_machine_two_processes
    summary = read_summary(out)
    assert summary["optimizer_steps"] == 8 and summary["finished"]
    assert summary["last_loss"] < summary["first_loss"]
    # the cosine schedule reaches the optimizer DeepSpeed steps (lr read from its parameter groups)
    lrs = [h["lr"] for h in summary["history"]]
    assert lrs[0] == pytest.approx(3e-3) and all(a > b > 0 for a, b in zip(lrs, lrs[1:]))
    assert checkpoint_names(out) == ["checkpoint-4", "checkpoint-8"]

    trained = AutoModelForCausalLM.from_pretrained(summary["final_checkpoint"], dtype="auto")
    assert next(trained.parameters()).dtype == torch.bfloat16  # 16-bit weights gathered from the shards
    original = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-llama"])
    assert max_weight_change(trained.float(), original) > 1e-3
    tokenizer = AutoTokenizer.from_pretrained(summary["final_checkpoint"])
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": DEMO_ROWS[0]["Question"]}], add_generation_prompt=True, return_tensors="pt"
    )
    generated = trained.float().generate(**prompt, max_new_tokens=6, do_sample=False)
    assert generated.shape[1] > prompt["input_ids"].shape[1]


@pytest.mark.multiprocess
def test_both_processes_check_a_zero3_checkpoint_and_agree_on_what_is_damaged(
    tiny_models, zero3_data, zero3_one_machine_two_processes, tmp_path
):
    """The manifest lists the files of both processes; a rerun spreads the digests over them (each reads its share)
    and both decide alike: nothing to do, or one line naming a file only one of them read."""
    out = str(tmp_path / "out")
    shutil.copytree(zero3_one_machine_two_processes, out)
    newest = os.path.join(out, "sft_stage1", "checkpoint-8")
    listed = {entry["path"] for entry in read_json(os.path.join(newest, "manifest.json"))["files"]}
    assert {"training_state/random_states_0.pkl", "training_state/random_states_1.pkl"} <= listed
    assert manifests.problems(newest) == []
    command = accelerate_launch("SFT_stage1.py", zero3_flags(tiny_models, zero3_data, out), free_port())
    (result,) = launch_ok([command])
    assert "holds a finished run of these inputs" in result.stdout
    reason = damage(os.path.join(newest, "training_state", "random_states_1.pkl"), "flipped")
    results, left = run_launches(
        [accelerate_launch("SFT_stage1.py", zero3_flags(tiny_models, zero3_data, out), free_port())]
    )
    assert results[0].returncode != 0 and not left and "nothing to do" not in results[0].stdout
    damaged = os.path.join(newest, "training_state", "random_states_1.pkl")
    assert f"error: {damaged} does not match its manifest {reason};" in results[0].stderr


@pytest.mark.multiprocess
def test_two_machines_of_one_process_train_as_one_machine_of_two(
    tiny_models, zero3_data, zero3_one_machine_two_processes, tmp_path
):
    """The multi-node launch of docs/scaling.md, on localhost: two `accelerate launch` commands (--num_machines 2,
    --machine_rank 0 and 1, machine 0's address and port), one process each, ZeRO-3 over gloo."""
    out, port = str(tmp_path / "out"), free_port()
    machines = launch_ok(
        [
            accelerate_launch(
                "SFT_stage1.py", zero3_flags(tiny_models, zero3_data, out), port, num_machines=2, machine_rank=rank
            )
            for rank in (0, 1)
        ]
    )
    # machine 1 ran the non-main rank: the summary is machine 0's to write
    assert "final checkpoint:" in machines[0].stdout and "final checkpoint:" not in machines[1].stdout
    two_machines, one_machine = read_summary(out), read_summary(zero3_one_machine_two_processes)
    assert two_machines["optimizer_steps"] == 8 and two_machines["finished"]
    # the same run: every step's loss, token accuracy and learning rate equal, and the weights byte for byte
    # (measured: no tolerance is needed, the ranks do the same sums in the same order)
    assert two_machines["history"] == one_machine["history"]
    assert (
        checkpoint_names(out) == checkpoint_names(zero3_one_machine_two_processes) == ["checkpoint-4", "checkpoint-8"]
    )
    for name in checkpoint_names(out):
        with open(os.path.join(out, "sft_stage1", name, "model.safetensors"), "rb") as f:
            weights = f.read()
        with open(os.path.join(zero3_one_machine_two_processes, "sft_stage1", name, "model.safetensors"), "rb") as f:
            assert f.read() == weights, name
    assert not listening_pids(port)  # the rendezvous port is free again


def test_a_hub_dataset_id_offline_fails_with_advice(tiny_models, tmp_path):
    message = main_exit_message(
        common_flags(tiny_models["tiny-llama"], "FreedomIntelligence/medical-o1-reasoning-SFT", str(tmp_path))
    )
    assert "could not load the Hugging Face dataset 'FreedomIntelligence/medical-o1-reasoning-SFT'" in message
    assert "pass the local .json/.jsonl file instead" in message
