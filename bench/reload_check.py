"""Reload saved model folders on a device and use them: a causal LM answers a question, a classifier scores one.

    python bench/reload_check.py --device cuda --output_file reload.json CHECKPOINT ...

Each folder is loaded as its config says (dtype "auto": the dtype it was saved in) onto --device: a causal LM
generates --new_tokens greedy tokens after a chat prompt (its logits must be finite), a sequence classifier
scores one verifier input (finite logits, one per label). Writes {folder: figures} to --output_file; exit 1
when any folder fails, the reason in its figures.
"""

import json
import sys
import time
import traceback

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from huatuo_o1 import cli
from huatuo_o1.models import load_chat_tokenizer
from huatuo_o1.verifier import verifier_input

QUESTION = "A 60-year-old smoker has a cough with blood for two months. What is the first test to order?"


def check_folder(folder, device, new_tokens):
    started = time.time()
    config = AutoConfig.from_pretrained(folder)
    classifier = any(name.endswith("ForSequenceClassification") for name in config.architectures or [])
    model_class = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    model = model_class.from_pretrained(folder, dtype="auto").to(device).eval()
    tokenizer = load_chat_tokenizer(folder)
    figures = {"class": type(model).__name__, "dtype": str(model.dtype).replace("torch.", ""), "device": device}
    with torch.no_grad():
        if classifier:
            text = verifier_input("Bronchoscopy.", "Chest X-ray", tokenizer.eos_token)
            inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(device)
            logits = model(**inputs).logits
            figures.update(labels=logits.shape[-1], finite=bool(torch.isfinite(logits).all()))
        else:
            inputs = tokenizer.apply_chat_template(
                [{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt",
                return_dict=True,
            ).to(device)  # fmt: skip
            logits = model(**inputs).logits
            output = model.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )  # fmt: skip
            new = output[0, inputs["input_ids"].shape[1] :]
            figures.update(
                new_tokens=int(new.numel()),
                finite=bool(torch.isfinite(logits).all()),
                text=tokenizer.decode(new, skip_special_tokens=True)[:80],
            )
    figures["ok"] = figures["finite"] and (classifier or figures["new_tokens"] == new_tokens)
    figures["seconds"] = round(time.time() - started, 2)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return figures


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("folders", nargs="+")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new_tokens", type=int, default=16)
    parser.add_argument("--output_file", required=True)
    args = parser.parse_args()
    results = {}
    for folder in args.folders:
        try:
            results[folder] = check_folder(folder, args.device, args.new_tokens)
        except Exception as error:
            traceback.print_exc()
            results[folder] = {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}
        print(f"{folder}: {json.dumps(results[folder], ensure_ascii=False)}", flush=True)
    with open(args.output_file, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
    return 0 if all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
