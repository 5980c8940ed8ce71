"""Whether trl's SFTTrainer builds the same SFT tokens and loss labels as SFT_stage1.py (the original's):
the rows through trl's prompt-completion path next to huatuo_o1.sft.build_examples, per tokenizer.

    python bench/sft_trainer_tokens.py                              # the tiny test tokenizers, data/demo_sft.json
    python bench/sft_trainer_tokens.py --model_path .cache/models/SmolLM2-135M-Instruct
"""

import os
import subprocess
import sys
import tempfile
import warnings

from huatuo_o1 import cli

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--model_path", nargs="*", help="model folders (default: tiny-llama and tiny-qwen2)")
    parser.add_argument("--data_path", default=os.path.join(REPO_ROOT, "data", "demo_sft.json"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from huatuo_o1.models import load_chat_tokenizer
    from huatuo_o1.records import load_records
    from huatuo_o1.sft import build_examples, prompt_completion_rows

    scratch = tempfile.mkdtemp(prefix="sft_tokens_")
    models = args.model_path
    if not models:
        subprocess.run([sys.executable, os.path.join(REPO_ROOT, "tests", "tiny_models.py"), "--output_dir", scratch],
                       check=True, capture_output=True)  # fmt: skip
        models = [os.path.join(scratch, "tiny-llama"), os.path.join(scratch, "tiny-qwen2")]
    rows = load_records(args.data_path)
    for model_path in models:
        tokenizer = load_chat_tokenizer(model_path)
        ours, _ = build_examples(rows, tokenizer, 10**6, "drop", args.data_path, show_progress=False)
        dataset = Dataset.from_list(prompt_completion_rows(rows))
        config = SFTConfig(output_dir=os.path.join(scratch, "out"), max_length=None, report_to="none", use_cpu=True,
                           completion_only_loss=True)  # fmt: skip
        model = AutoModelForCausalLM.from_pretrained(model_path)
        trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer)
        same_ids = sum(t["input_ids"] == o["input_ids"] for o, t in zip(ours, trainer.train_dataset))
        same_labels = sum(t["labels"] == o["labels"] for o, t in zip(ours, trainer.train_dataset))
        print(
            f"{os.path.basename(model_path)}: {len(rows)} rows, same input ids {same_ids}, same labels {same_labels}"
        )


if __name__ == "__main__":
    main()
