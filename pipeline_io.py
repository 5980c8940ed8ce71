"""Records and models in and out, shared by every stage.

Each stage reads a list of JSON objects (a local .json/.jsonl file or a Hugging Face dataset id)
and writes JSON that the next stage reads. Hub ids fail with a clear message when offline.
"""

import json
import os
import tempfile

# Dataset ids with several configurations on the hub, and the one the paper's commands mean.
DEFAULT_HUB_CONFIGS = {
    "FreedomIntelligence/medical-o1-reasoning-SFT": "en",
}


class InputError(ValueError):
    """Bad input a user must fix: the message says which file and which row."""


def looks_like_hub_id(path_or_id):
    return not os.path.exists(path_or_id) and path_or_id.count("/") == 1 and not path_or_id.endswith((".json", ".jsonl"))


def _read_local(path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".jsonl"):
        rows = []
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: line {line_no} is not valid JSON ({e.msg})") from None
        return rows
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None


def _read_hub(dataset_id, split):
    name, _, config = dataset_id.partition(":")
    config = config or DEFAULT_HUB_CONFIGS.get(name)
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises several types for "offline" / "not found"
        raise InputError(
            f"could not load the Hugging Face dataset '{dataset_id}' ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "If this machine is offline, download it where you have network "
            f"(`huggingface-cli download --repo-type dataset {name} --local-dir data/...`) and pass the local .json/.jsonl file instead."
        ) from None
    return [dict(row) for row in dataset]


def load_records(path_or_id, required_fields=(), split="train", allow_empty=False):
    """Return a list of dicts from a local JSON list / JSONL file or a hub dataset id.

    Raises InputError naming the file and the first bad row when the top level is not a list,
    a row is not an object, or a row lacks one of required_fields.
    """
    if looks_like_hub_id(path_or_id):
        rows = _read_hub(path_or_id, split)
    elif not os.path.isfile(path_or_id):
        raise InputError(f"{path_or_id}: no such file (and not a Hugging Face dataset id of the form org/name)")
    else:
        rows = _read_local(path_or_id)
    if not isinstance(rows, list):
        raise InputError(f"{path_or_id}: expected a JSON list of objects at the top level, found {type(rows).__name__}")
    if not rows and not allow_empty:
        raise InputError(f"{path_or_id}: the list is empty, nothing to do")
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"{path_or_id}: row {index} is a {type(row).__name__}, expected an object")
        missing = [field for field in required_fields if field not in row]
        if missing:
            raise InputError(f"{path_or_id}: row {index} lacks the field(s) {', '.join(map(repr, missing))}")
    return rows


def write_json_atomic(path, obj):
    """Write JSON so that a crash leaves either the old file or the new one, never half of one."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, ensure_ascii=False, indent=2)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should read like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def from_pretrained_or_explain(auto_cls, name_or_path, **kwargs):
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


LLAMA3_CHAT_TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "sft", "llama3_chat_template.jinja")


def load_chat_tokenizer(name_or_path, **kwargs):
    """The tokenizer with a chat template: a base model without one gets the Llama-3 instruct layout.

    SFT trains in that layout, so RL and inference must prompt a fine-tuned base model the same way.
    """
    from transformers import AutoTokenizer

    tokenizer = from_pretrained_or_explain(AutoTokenizer, name_or_path, **kwargs)
    if not tokenizer.chat_template:
        with open(LLAMA3_CHAT_TEMPLATE, encoding="utf-8") as f:
            tokenizer.chat_template = f.read()
    return tokenizer


def attn_implementation():
    """flash_attention_2 where it is installed and a GPU is present (the original forced it), else sdpa."""
    import importlib.util

    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"
