"""Loading models and tokenizers: clear errors, the attention kernel, the chat layout, pad tokens.

- check_model_source / check_verifier_config: before anything loads, a local path that is no model folder
  ("no such folder"), a folder whose files do not match its manifest (huatuo_o1/manifests.py), and a verifier that
  is not a 2-label sequence classifier, stop with one line.
- from_pretrained_or_explain: any Auto* class; a model that cannot be loaded is one line (InputError),
  and a hub id that cannot be fetched says what to download.
- load_chat_tokenizer: a tokenizer without a chat template gets the Llama-3 instruct layout
  (templates/llama3_chat_template.jinja), so SFT, RL and inference prompt a base model alike.
- attn_implementation: flash_attention_2 where it is installed, a GPU is present and the model computes in
  half precision, else sdpa.
- distinct_pad_token / policy_pad_token: the pad token must not be the eos (padding must not look
  like the end of an answer); the policy follows the original's rule for Llama-3.
"""

import importlib.util
import os
from typing import TYPE_CHECKING, Any

import torch

from huatuo_o1.manifests import check_model_folder
from huatuo_o1.records import InputError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

LLAMA3_CHAT_TEMPLATE = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "templates", "llama3_chat_template.jinja"
)
# Pad tokens to reuse (in this order) when a tokenizer has none or pads with eos; Llama-3's is the first.
PAD_CANDIDATES = ["<|end_of_text|>", "<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "<|pad|>"]


def looks_local(name_or_path: str) -> bool:
    """A path rather than a hub id ('org/name', or a bare legacy name such as 'gpt2').

    'models/X' where a folder ./models exists is taken as a path: that is where the README downloads to.
    """
    return (
        os.path.isabs(name_or_path)
        or name_or_path.startswith((".", "~"))
        or name_or_path.count("/") > 1
        or name_or_path.endswith("/")
        or (name_or_path.count("/") == 1 and os.path.isdir(name_or_path.split("/")[0]))
    )


def check_model_source(name_or_path: str, flag: str, verify: str | None = None) -> None:
    """Before anything loads: a local path must be a model folder (config.json) whose files match its manifest where
    it has one (verify: "full" or "sizes"; None: HUATUO_VERIFY_CHECKPOINTS's, else full); hub ids are tried at load
    time."""
    if os.path.isdir(name_or_path):
        if not os.path.isfile(os.path.join(name_or_path, "config.json")):
            raise InputError(f"{flag} {name_or_path}: not a model folder (it has no config.json)")
        check_model_folder(name_or_path, flag, verify)
    elif os.path.exists(name_or_path):
        raise InputError(f"{flag} {name_or_path}: is a file, expected a model folder or a hub id")
    elif looks_local(name_or_path):
        raise InputError(f"{flag} {name_or_path}: no such folder")


def from_pretrained_or_explain(auto_cls: type, name_or_path: str, **kwargs) -> Any:
    """auto_cls.from_pretrained; a model that cannot be loaded is one line (InputError) saying what to do.

    A model (an AutoModel* class) from a local folder with a manifest is checked against it first (once per process,
    HUATUO_VERIFY_CHECKPOINTS's mode, unless check_model_source checked it already)."""
    if auto_cls.__name__.startswith("AutoModel") and os.path.isdir(name_or_path):
        check_model_folder(name_or_path, "model folder")
    try:
        return auto_cls.from_pretrained(name_or_path, **kwargs)
    except OSError as e:
        reason = " ".join(str(e).split())[:300]
        if os.path.isdir(name_or_path):
            raise InputError(f"{name_or_path}: {auto_cls.__name__} could not load this folder ({reason})") from None
        if looks_local(name_or_path):
            raise InputError(f"{name_or_path}: no such folder") from None
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        why = "the hub is off (HF_HUB_OFFLINE is set)" if offline else "offline, gated, or misspelt"
        raise InputError(
            f"could not load '{name_or_path}' with {auto_cls.__name__}: it is not a local folder and the "
            f"Hugging Face hub could not provide it ({why}). Download it where you have network "
            f"(`hf download {name_or_path} --local-dir models/...`) and pass the folder."
        ) from None


def check_verifier_config(path: str, flag: str = "--reward_model_path", verify: str | None = None) -> None:
    """Before loading: the verifier must be a sequence classifier with 2 labels (label 1 = correct), its files
    matching its manifest where it has one (check_model_source).

    A causal LM would load as a classifier with a new, random head and give random rewards without a word.
    """
    from transformers import AutoConfig

    check_model_source(path, flag, verify)
    config = from_pretrained_or_explain(AutoConfig, path)
    architectures = list(getattr(config, "architectures", None) or [])
    if not any(name.endswith("ForSequenceClassification") for name in architectures) or config.num_labels != 2:
        found = ", ".join(architectures) or f"a '{config.model_type}' model of unknown architecture"
        raise InputError(
            f"{flag} {path}: {found} with {config.num_labels} label(s); the verifier must be a sequence "
            "classifier with 2 labels (*ForSequenceClassification, label 1 = correct), e.g. train_verifier.py's "
            "output or FreedomIntelligence/medical_o1_verifier_3B"
        )


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


def attn_implementation(half_precision: bool) -> str:
    """flash_attention_2 where it is installed and a GPU is present, else sdpa.

    The original's RL script forced flash_attention_2 on all four of its models; its SFT script passed none, which
    left transformers' default, sdpa (docs/fidelity.md).

    half_precision: whether the model computes in bf16 / fp16 (its weights, or mixed precision's autocast).
    FlashAttention-2 has no float32 kernel: a float32 model given it fails at its first forward pass.
    """
    if half_precision and torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
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
