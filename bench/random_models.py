"""Random Llama-architecture models for the GPU check: a policy, a value model and a verifier, built from a config
with random weights (nothing can be downloaded on the GPU machine) and a real tokenizer, saved as Hugging Face
folders that every stage loads. Random weights are fine for throughput, memory and "does it run"; they say
nothing about quality.

    python bench/random_models.py --tokenizer .gpu_wheels/tokenizer --output_dir bench_out/gpu/models \\
        --policy 2048x16 --value 1024x28 --verifier 1024x28 --device cuda --dtype bfloat16

A size is HIDDENxLAYERS: attention heads of 64 dimensions (HIDDEN/64 of them, a quarter as many key-value heads),
an MLP 4 x HIDDEN wide, tied input and output embeddings, as Llama-3.2-1B is shaped (2048x16 is its shape with
the tokenizer's vocabulary). The value model has a 1-label head, the verifier a 2-label one (label 1 = correct).
Writes <output_dir>/{policy,value,verifier}/ and models.json (parameters, sizes, where they were built, seconds).
"""

import argparse
import json
import os
import time

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from huatuo_o1 import cli

HEAD_DIM = 64


def parse_size(text):
    """'2048x16' -> (2048, 16)."""
    hidden, layers = (int(part) for part in text.lower().split("x"))
    if hidden % HEAD_DIM or layers < 1:
        raise argparse.ArgumentTypeError(f"{text}: HIDDENxLAYERS with HIDDEN a multiple of {HEAD_DIM}")
    return hidden, layers


def llama_config(tokenizer, hidden, layers, **extra):
    heads = hidden // HEAD_DIM
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        head_dim=HEAD_DIM,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def build(model_class, config, device, dtype, folder, tokenizer):
    """Build on the device (random initialisation is fast there), save in dtype; returns the parameter count."""
    with torch.device(device):
        model = model_class(config).to(dtype)
    model.config.dtype = dtype
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    del model
    return count


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--tokenizer", required=True, help="a tokenizer folder (with its chat template)")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--policy", type=parse_size, default=(2048, 16), help="HIDDENxLAYERS (default 2048x16)")
    parser.add_argument("--value", type=parse_size, default=(1024, 28), help="HIDDENxLAYERS (default 1024x28)")
    parser.add_argument("--verifier", type=parse_size, default=(1024, 28), help="HIDDENxLAYERS (default 1024x28)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    started = time.time()
    torch.manual_seed(args.seed)
    dtype = getattr(torch, args.dtype)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    labels = {"id2label": {0: "False", 1: "True"}, "label2id": {"False": 0, "True": 1}}
    plan = {
        "policy": (LlamaForCausalLM, llama_config(tokenizer, *args.policy)),
        "value": (LlamaForSequenceClassification, llama_config(tokenizer, *args.value, num_labels=1)),
        "verifier": (LlamaForSequenceClassification, llama_config(tokenizer, *args.verifier, num_labels=2, **labels)),
    }
    report = {
        "weights": "random (built from a config): for throughput, memory and whether each stage runs, not quality",
        "tokenizer": os.path.abspath(args.tokenizer),
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "torch_cuda": torch.version.cuda,
        "dtype": args.dtype,
        "models": {},
    }
    for name, (model_class, config) in plan.items():
        folder = os.path.join(args.output_dir, name)
        parameters = build(model_class, config, args.device, dtype, folder, tokenizer)
        report["models"][name] = {
            "folder": os.path.abspath(folder),
            "class": model_class.__name__,
            "parameters": parameters,
            "hidden_size": config.hidden_size,
            "layers": config.num_hidden_layers,
            "vocab_size": config.vocab_size,
        }
        print(f"{name}: {model_class.__name__}, {parameters / 1e9:.3f}B parameters -> {folder}", flush=True)
    report["seconds"] = round(time.time() - started, 1)
    with open(os.path.join(args.output_dir, "models.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
