"""Build tiny random chat models, offline, in about a second.

Used by the tests (and handy for trying any stage on a laptop) because nothing can be
downloaded here. Each model is a real Hugging Face folder that the Auto* classes load:

    tiny-llama        LlamaForCausalLM, Llama-3 style chat template
    tiny-qwen2        Qwen2ForCausalLM, ChatML chat template
    tiny-verifier     LlamaForSequenceClassification, 2 labels (label 1 = "correct")
    tiny-value        Qwen2ForSequenceClassification, 1 label (a PPO value model)
    build_tiny_vllm_policy: a tiny Llama with heads of 32 (vLLM's CPU attention has no head size 16)

Usage:
    python tests/tiny_models.py --output_dir /tmp/tiny
"""

import argparse
import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
)

VOCAB_SIZE = 512

# Llama-3 instruct layout (the layout SFT gives tokenizers without a template).
LLAMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + "
    "'<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Words the tokenizer is trained on: the chat layout and the medical vocabulary the tests use.
TRAINING_TEXT = [
    "## Thinking\n\nThe patient presents with fever and cough. Let me reason step by step.",
    "## Final Response\n\nThe most likely diagnosis is community-acquired pneumonia.",
    "Please answer the following multiple-choice question: A. B. C. D. E. The answer is A.",
    "<Model Response> </Model Response> <Reference Answer> </Reference Answer> True False",
    "Your task is to evaluate the model response by comparing it to the reference answer.",
    "If the model response is correct and aligns with the reference answer, output True.",
    "Which drug is first line for hypertension in diabetes? An ACE inhibitor such as lisinopril.",
    "A 45-year-old man has chest pain, troponin rises, ECG shows ST elevation: myocardial infarction.",
    "I do not know the answer. system user assistant 0123456789 ,.;:!?()[]{}'\"-+*/=<>",
    "问题 答案 思考 最终回答 患者 发热 咳嗽 诊断 肺炎 治疗",
]


def train_tokenizer(special_tokens):
    """A byte-level BPE tokenizer trained on TRAINING_TEXT, specials first (ids 0..n-1)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(TRAINING_TEXT * 20, trainer=trainer)
    return tokenizer


def llama_tokenizer():
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(specials),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        pad_token="<|end_of_text|>",  # as RL pads Llama-3 policies: pad differs from eos
        additional_special_tokens=["<|start_header_id|>", "<|end_header_id|>"],
    )
    tok.chat_template = LLAMA3_TEMPLATE
    return tok


def qwen2_tokenizer():
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = PreTrainedTokenizerFast(
        tokenizer_object=train_tokenizer(specials),
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _small(config_cls, tok, **extra):
    sizes = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    )
    return config_cls(
        vocab_size=len(tok),
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{**sizes, **extra},
    )


def build_tiny_models(output_dir, seed=0):
    """Write the four tiny models under output_dir and return {name: folder}."""
    torch.manual_seed(seed)
    paths = {}
    specs = [
        ("tiny-llama", llama_tokenizer, LlamaConfig, LlamaForCausalLM, {}),
        ("tiny-qwen2", qwen2_tokenizer, Qwen2Config, Qwen2ForCausalLM, {}),
        ("tiny-verifier", llama_tokenizer, LlamaConfig, LlamaForSequenceClassification, {"num_labels": 2}),
        ("tiny-value", qwen2_tokenizer, Qwen2Config, Qwen2ForSequenceClassification, {"num_labels": 1}),
    ]
    for name, make_tokenizer, config_cls, model_cls, extra in specs:
        folder = os.path.join(output_dir, name)
        tok = make_tokenizer()
        model = model_cls(_small(config_cls, tok, **extra))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        paths[name] = folder
    with open(os.path.join(output_dir, "tiny_models.json"), "w") as f:
        json.dump(paths, f, indent=2)
    return paths


def build_tiny_vllm_policy(output_dir, seed=0):
    """A tiny Llama chat model vLLM's CPU backend can run (its attention needs head sizes of 32 or more;
    the models above have 16): 2 heads of 32, one key/value head. Returns the folder."""
    torch.manual_seed(seed)
    tok = llama_tokenizer()
    model = LlamaForCausalLM(_small(LlamaConfig, tok, num_attention_heads=2, num_key_value_heads=1))
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(output_dir)
    tok.save_pretrained(output_dir)
    return str(output_dir)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, folder in build_tiny_models(args.output_dir, args.seed).items():
        print(f"{name}: {folder}")


if __name__ == "__main__":
    main()
