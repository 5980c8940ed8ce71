"""Shared record loading and atomic writes."""

import json
import os
import stat

import pytest

from huatuo_o1.cli import redact
from huatuo_o1.records import InputError, digest, load_records, read_json, write_json_atomic


def test_load_json_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"question": "q1"}, {"question": "q2"}]))
    (tmp_path / "b.jsonl").write_text('{"question": "q1"}\n\n{"question": "q2"}\n')
    assert load_records(str(tmp_path / "a.json"), ["question"]) == load_records(
        str(tmp_path / "b.jsonl"), ["question"]
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"question": "q"}', "expected a JSON list"),
        ("[]", "the list is empty"),
        ('[{"question": "q"}, 3]', "row 1 is a int"),
        ('[{"question": "q"}, {"answer": "a"}]', "row 1 lacks the field(s) 'question'"),
    ],
)
def test_bad_input_names_the_file_and_row(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError) as error:
        load_records(str(path), ["question"])
    assert str(path) in str(error.value) and message in str(error.value)


def test_read_json_takes_a_path_object_as_well_as_a_string(tmp_path):
    (tmp_path / "one.json").write_text('{"a": 1}')
    (tmp_path / "rows.jsonl").write_text('{"a": 1}\n{"a": 2}\n')
    assert read_json(tmp_path / "one.json") == read_json(str(tmp_path / "one.json")) == {"a": 1}
    assert read_json(tmp_path / "rows.jsonl") == [{"a": 1}, {"a": 2}]  # .jsonl read as rows from a Path too
    with pytest.raises(InputError, match="rows.jsonl: line 2 is not valid JSON"):
        (tmp_path / "rows.jsonl").write_text('{"a": 1}\n{oops\n')
        read_json(tmp_path / "rows.jsonl")


def test_offline_hub_id_fails_with_advice():
    with pytest.raises(InputError) as error:
        load_records("FreedomIntelligence/medical-o1-verifiable-problem")
    assert "download it" in str(error.value) and "local .json/.jsonl" in str(error.value)


def test_digest_of_data_ignores_key_order_and_of_bytes_hashes_them_as_they_are():
    assert digest({"a": 1, "b": ["é", 2]}) == digest({"b": ["é", 2], "a": 1}) != digest({"a": 1, "b": ["e", 2]})
    assert digest(b"abc") == "ba7816bf8f01cfea"  # SHA-256 of "abc", its first 16 hex digits
    assert digest(["x"]) == digest(b'["x"]') and len(digest(None)) == 16


def test_redact_removes_every_copy_of_the_key_from_anything_shown():
    key = "sk-SECRET-123"
    echoed = {"error": f"bad key {key}", "header": f"Bearer {key}"}
    assert redact(echoed, key) == "{'error': 'bad key [redacted]', 'header': 'Bearer [redacted]'}"
    assert redact(f"{key}{key}", key) == "[redacted][redacted]"
    assert redact("nothing to hide", key) == "nothing to hide"
    for no_key in (None, ""):
        assert redact(f"text {key}", no_key) == f"text {key}"  # no key given: nothing is one
    assert redact(None, key) == "None" and redact(404, key) == "404"


def test_atomic_write_replaces_whole_file_readable_by_others(tmp_path):
    path = tmp_path / "out" / "result.json"
    write_json_atomic(str(path), {"a": 1})
    write_json_atomic(str(path), {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert os.listdir(path.parent) == ["result.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_base_model_tokenizer_gets_the_llama3_layout_in_sft_and_rl(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    from huatuo_o1.models import load_chat_tokenizer
    from huatuo_o1.rl.loading import prompt_ids

    base = AutoTokenizer.from_pretrained(tiny_models["tiny-llama"])
    base.chat_template = None
    base.save_pretrained(tmp_path)
    (tmp_path / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = load_chat_tokenizer(str(tmp_path))
    # RL prompts a fine-tuned base model exactly as SFT trained it (question trimmed by the template).
    assert tokenizer.decode(prompt_ids(tokenizer, "  What causes fever? ")) == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat causes fever?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
