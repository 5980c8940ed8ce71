"""Loading models and tokenizers: clear errors, the attention kernel, the chat layout, pad tokens.

- from_pretrained_or_explain: any Auto* class; a hub id that cannot be fetched says what to download.
- load_chat_tokenizer: a tokenizer without a chat template gets the Llama-3 instruct layout
  (templates/llama3_chat_template.jinja), so SFT, RL and inference prompt a base model alike.
- attn_implementation: flash_attention_2 where it is installed and a GPU is present, else sdpa.
- distinct_pad_token / policy_pad_token: the pad token must not be the eos (padding must not look
  like the end of an answer); the policy follows the original's rule for Llama-3.
"""

import importlib.util
import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LLAMA3_CHAT_TEMPLATE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "templates", "llama3_chat_template.jinja"
)
# Pad tokens to reuse (in this order) when a tokenizer has none or pads with eos; Llama-3's is the first.
PAD_CANDIDATES = ["<|end_of_text|>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "<|pad|>"]


def from_pretrained_or_explain(auto_cls: type, name_or_path: str, **kwargs) -> Any:
    """auto_cls.from_pretrained, with a message that says what to do when a hub id cannot be fetched."""
    try:
        return auto_cls.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        if os.path.isdir(name_or_path):
            raise
        raise OSError(
            f"could not load '{name_or_path}' with {auto_cls.__name__}: it is not a local folder and the "
            "Hugging Face hub could not provide it (offline, gated, or misspelt). Download it where you have "
            f"network (`huggingface-cli download {name_or_path} --local-dir models/...`) and pass the folder."
        ) from e


def load_chat_tokenizer(name_or_path: str, **kwargs) -> "PreTrainedTokenizerBase":
    """The tokenizer with a chat template: a base model without one gets the Llama-3 instruct layout.

    SFT trains in that layout, so RL and inference must prompt a fine-tuned base model the same way.
    """
    from transformers import AutoTokenizer

    tokenizer = from_pretrained_or_explain(AutoTokenizer, name_or_path, **kwargs)
    if not tokenizer.chat_template:
        with open(LLAMA3_CHAT_TEMPLATE, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
    return tokenizer


def attn_implementation() -> str:
    """flash_attention_2 where it is installed and a GPU is present (the original forced it), else sdpa."""
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def distinct_pad_token(tokenizer: "PreTrainedTokenizerBase") -> bool:
    """Make the pad token differ from eos (padding must not look like the end of an answer).

    Returns True when a new token had to be added (the embeddings must then grow by one).
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return False
    vocab = tokenizer.get_vocab()
    for candidate in PAD_CANDIDATES:
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            tokenizer.pad_token = candidate
            return False
    tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return True


def policy_pad_token(tokenizer: "PreTrainedTokenizerBase") -> bool:
    """The RL policy's pad token: the original's rule for Llama-3 (<|end_of_text|> whenever <|eot_id|>
    exists), else distinct_pad_token.

    The pad id ends a response when the policy samples it, so which token it is can change a number.
    Returns True when a new token had to be added.
    """
    vocab = tokenizer.get_vocab()
    if "<|eot_id|>" in vocab and vocab.get("<|end_of_text|>", tokenizer.eos_token_id) != tokenizer.eos_token_id:
        tokenizer.pad_token = "<|end_of_text|>"
        return False
    return distinct_pad_token(tokenizer)
