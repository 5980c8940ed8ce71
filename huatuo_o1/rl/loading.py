"""What RL_stage2.py loads: the verifiable problems (train / held out) and the four models.

The policy prompts a question through its chat template (the Llama-3 layout for a base model, as
SFT trained it); the verifier is used exactly as shipped. PPO with --lora_r: the policy gets LoRA adapters and no
reference is loaded (the policy with its adapters off is the reference).
"""

import os
import random
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from huatuo_o1.lora import add_adapters
from huatuo_o1.models import attn_implementation, from_pretrained_or_explain, load_chat_tokenizer, policy_pad_token
from huatuo_o1.recipe import has_options
from huatuo_o1.records import (
    ANSWER_IDX,
    CLOSED_SET,
    DATA_TYPE,
    GROUND_TRUTH,
    OPEN_QUESTION,
    OPTIONS,
    QUESTION,
    InputError,
    load_records,
)
from huatuo_o1.rl.config import ModelConfig, PPOConfig, ScriptArguments
from huatuo_o1.verifier import load_verifier


@dataclass
class Problem:
    """One verifiable problem as RL uses it: the question, its reference answer, and the prompt's token ids."""

    question: str
    reference: str
    prompt_ids: list[int] | None = None
    # a closed-set problem (the recipe's medical_closed_set rows, read for --reward_mode rule / hybrid): its options by
    # letter and the right letter; None for an open-ended problem
    options: dict[str, str] | None = None
    answer_idx: str | None = None


@dataclass
class Models:
    tokenizer: object  # the policy's, padding on the left with a pad token other than eos
    policy: torch.nn.Module
    ref_policy: torch.nn.Module | None  # PPO without LoRA only (trl keeps its own reference)
    value_model: torch.nn.Module | None  # PPO only
    verifier: torch.nn.Module | None  # None where no verifier runs in this process (--reward_mode rule, --reward_url)
    verifier_tokenizer: object


def load_problems(
    script_args: ScriptArguments, seed: int, closed_set_options: bool = False
) -> tuple[list[Problem], list[Problem], int]:
    """Problems with a non-empty question and answer, shuffled; 10% (at most 200) held out.

    Question and answer are used as stored (the answer goes into the verifier's input unstripped, as the original's).
    closed_set_options: the closed-set rows (data_type medical_closed_set) bring their options and right letter,
    which they must carry (a rule scores them by the option). Returns (train, held out, number of rows skipped).
    """
    rows = load_records(script_args.dataset_name, split=script_args.dataset_train_split)
    problems = []
    for index, row in enumerate(rows):
        if not (str(row.get(OPEN_QUESTION) or "").strip() and str(row.get(GROUND_TRUTH) or "").strip()):
            continue
        problem = Problem(str(row[OPEN_QUESTION]), str(row[GROUND_TRUTH]))
        if closed_set_options and row.get(DATA_TYPE) == CLOSED_SET:
            if not has_options(row):
                raise InputError(
                    f"{script_args.dataset_name}: row {index} is a {CLOSED_SET} problem without its '{QUESTION}', "
                    f"'{OPTIONS}' and an '{ANSWER_IDX}' among them (prepare_training_data.py writes all three); the "
                    "rule scores such a problem by its option"
                )
            problem.options = {str(letter): str(text) for letter, text in row[OPTIONS].items()}
            problem.answer_idx = str(row[ANSWER_IDX])
        problems.append(problem)
    if len(problems) < 2:
        raise InputError(
            f"{script_args.dataset_name}: {len(problems)} usable row(s) of {len(rows)}; RL needs at least 2 rows with "
            f"non-empty '{OPEN_QUESTION}' and '{GROUND_TRUTH}' (one to train on, one to evaluate)."
        )
    random.Random(seed).shuffle(problems)
    n_eval = min(script_args.max_eval_samples, max(1, round(script_args.eval_fraction * len(problems))))
    return problems[n_eval:], problems[:n_eval], len(rows) - len(problems)


def prompt_ids(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    """The question through the policy's chat template (Llama-3 layout for a base model, as in SFT)."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def load_models(model_args: ModelConfig, config: PPOConfig) -> Models:
    dtype = {
        "auto": torch.bfloat16 if config.bf16 else torch.float32,
        "bfloat16": torch.bfloat16,
        "float16": torch.float16,
        "float32": torch.float32,
    }[model_args.dtype]
    common = dict(
        dtype=dtype,
        trust_remote_code=model_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation or attn_implementation(dtype != torch.float32),
    )
    tokenizer = load_chat_tokenizer(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        padding_side="left",
        trust_remote_code=model_args.trust_remote_code,
    )
    grew = policy_pad_token(tokenizer)
    policy = from_pretrained_or_explain(
        AutoModelForCausalLM, model_args.model_name_or_path, revision=model_args.model_revision, **common
    )
    ref_policy = value_model = None
    lora_policy = config.rl_algorithm == "ppo" and model_args.enabled  # RLOO / GRPO: trl adds the adapters
    if config.rl_algorithm == "ppo":
        if not lora_policy:
            ref_policy = from_pretrained_or_explain(
                AutoModelForCausalLM, model_args.model_name_or_path, revision=model_args.model_revision, **common
            )
        value_model = from_pretrained_or_explain(
            AutoModelForSequenceClassification,
            config.value_model_path or model_args.model_name_or_path,
            num_labels=1,
            **common,
        )
    for model in (policy, ref_policy, value_model):
        if model is None:
            continue
        if grew:
            model.resize_token_embeddings(len(tokenizer))
        model.config.pad_token_id = tokenizer.pad_token_id
    if lora_policy:
        # under DeepSpeed the adapters keep the policy's dtype: ZeRO-3 gathers a module's parameters in one dtype
        under_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true"
        policy = add_adapters(policy, model_args, "CAUSAL_LM", adapters_in_model_dtype=under_deepspeed, say=print_once)
    # The verifier exactly as shipped (tokenizer and config untouched): it reads its score where its own
    # config says, as it did when it was published (huatuo_o1/verifier.py pads accordingly). None where the reward
    # needs no verifier here (--reward_mode rule) or asks a served one (--reward_url).
    verifier = verifier_tokenizer = None
    if config.reward_mode != "rule" and not config.reward_url:
        verifier, verifier_tokenizer = load_verifier(config.reward_model_path, **common)
    for frozen in (ref_policy, verifier):
        if frozen is not None:
            frozen.requires_grad_(False).eval()
    return Models(tokenizer, policy, ref_policy, value_model, verifier, verifier_tokenizer)


def print_once(line: str) -> None:
    """Print on the main process only (a launch's other processes load the same models)."""
    from accelerate import PartialState

    PartialState().print(line)


def stop_token_id_for(config: PPOConfig, tokenizer: PreTrainedTokenizerBase) -> int | None:
    if config.stop_token_id is not None:
        return config.stop_token_id
    return tokenizer.eos_token_id if config.stop_token == "eos" else None
