"""The offline fixture models load with the Auto* classes and behave like chat models."""

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

MESSAGES = [{"role": "user", "content": "What causes fever?"}]


def test_llama_chat_template_and_generate(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-llama"])
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat causes fever?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.convert_ids_to_tokens([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]) == [
        "<|begin_of_text|>",
        "<|eot_id|>",
        "<|end_of_text|>",
    ]
    enc = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert enc["input_ids"][0, 0].item() == tok.bos_token_id
    out = model.generate(**enc, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    assert out.shape == (1, enc["input_ids"].shape[1] + 6)
    assert torch.equal(out[0, : enc["input_ids"].shape[1]], enc["input_ids"][0])


def test_qwen2_chatml_template(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["tiny-qwen2"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["tiny-qwen2"])
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhat causes fever?<|im_end|>\n<|im_start|>assistant\n"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert tok.decode(ids) == text  # byte-level BPE round-trips exactly
    assert model.config.model_type == "qwen2"
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok))


def test_verifier_has_two_labels_and_batches(tiny_models):
    tok = AutoTokenizer.from_pretrained(tiny_models["tiny-verifier"])
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["tiny-verifier"])
    batch = tok(["True answer", "a much longer false answer here"], padding=True, return_tensors="pt")
    logits = model(**batch).logits
    assert logits.shape == (2, 2)
    assert model.config.pad_token_id == tok.pad_token_id
    # Padding must not change a row's score: the head reads the last real token.
    alone = model(**tok(["True answer"], return_tensors="pt")).logits
    assert torch.allclose(alone[0], logits[0], atol=1e-5)


def test_value_model_has_one_label(tiny_models):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["tiny-value"])
    assert model.config.num_labels == 1
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 1)
