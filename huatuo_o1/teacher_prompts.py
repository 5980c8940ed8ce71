"""The teacher's text: prompt templates read from files and filled in, and the JSON object read back out of a reply.

- load_prompts / render: templates from huatuo_o1/prompts/<language>/, or the user's --prompt_dir, each checked
  for the placeholders the stage fills in.
- parse_json_object: the JSON object of a reply that may wrap it in a ```json fence or in prose;
  parse_json_object_as_original: the original's looser reading, for --reply_parsing original.
"""

import json
import os
import re

from huatuo_o1.records import InputError, read_text

PROMPTS_ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts")


def load_prompts(required: dict, language: str = "en", prompt_dir: str | None = None) -> dict[str, str]:
    """required: {template name: [placeholders it must contain]} -> {name: template text}."""
    prompts = {}
    for name, placeholders in required.items():
        candidates = ([os.path.join(prompt_dir, f"{name}.txt")] if prompt_dir else []) + [
            os.path.join(PROMPTS_ROOT, language, f"{name}.txt")
        ]
        path = next((p for p in candidates if os.path.isfile(p)), None)
        if path is None:
            raise InputError(
                f"prompt template '{name}.txt' not found in {' or '.join(os.path.dirname(p) for p in candidates)}"
            )
        text = read_text(path, "prompt template")
        missing = [p for p in placeholders if "{" + p + "}" not in text]
        if missing:
            raise InputError(
                f"{path}: the template lacks the placeholder(s) {', '.join('{' + p + '}' for p in missing)}"
            )
        prompts[name] = text
    return prompts


def render(template: str, **values) -> str:
    """Fill {name} placeholders in one pass (text filled in is never scanned again); other braces stay."""
    return re.sub(r"\{(\w+)\}", lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


def parse_json_object(text: str) -> dict:
    """The JSON object in a reply: plain, inside a ```json fence, or between prose. Raises ValueError."""
    text = (text or "").strip()
    candidates = [text]
    candidates += re.findall(r"```(?:json|JSON)?\s*(.*?)```", text, flags=re.DOTALL)
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate, strict=False)  # strict=False: raw newlines inside strings
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError(f"no JSON object found in the reply ({text[:80]!r}...)")


def parse_json_object_as_original(text: str) -> dict:
    """The original's reading of a JSON reply: unless the reply starts with '{', the text from its first
    '{' to its last '}'; every raw newline deleted (line breaks inside strings are lost, text on two
    lines is joined); then strict JSON. Raises ValueError."""
    text = text or ""
    if not text.startswith("{"):
        match = re.search(r"\{.*\}", text, flags=re.DOTALL)
        if match is None:
            raise ValueError(f"no {{...}} in the reply ({text[:80]!r}...)")
        text = match.group(0)
    try:
        value = json.loads(text.replace("\n", ""))
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON once newlines are deleted: {error}") from None
    if not isinstance(value, dict):
        raise ValueError("the JSON is not an object")
    return value
