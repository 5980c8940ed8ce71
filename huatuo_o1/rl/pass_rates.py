"""How often a policy's sampled answers name the reference: a low-noise measure of what RL changed.

A policy sure of the right option when scored teacher-forced still writes other, shorter or wrong answers when
it samples, so the measure samples, as RL does (pure temperature, up to response_length tokens), and counts the
answers whose final answer names the reference (the string-match baseline, which the verifier agrees with on
short answers). The same seed before and after RL draws the same random numbers, so two policies' rates differ
by the policy, less by the luck of the draw (bench/rl_learning.py).
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from huatuo_o1.answer_format import final_answer
from huatuo_o1.records import GROUND_TRUTH, OPEN_QUESTION
from huatuo_o1.rl.loading import prompt_ids
from huatuo_o1.training import pad_batch
from huatuo_o1.verifier_training import string_match

PROMPTS_PER_BATCH = 4


def sampled_pass_rates(
    policy_dir: str, problems: list[dict], samples: int, temperature: float, response_length: int, seed: int
) -> list[float]:
    """Per problem (a verifiable problem's row): the share of `samples` sampled answers naming its reference."""
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()
    sample = GenerationConfig(
        max_new_tokens=response_length,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        num_return_sequences=samples,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
    )
    rates = []
    for start in range(0, len(problems), PROMPTS_PER_BATCH):
        batch = problems[start : start + PROMPTS_PER_BATCH]
        prompts = [prompt_ids(tokenizer, problem[OPEN_QUESTION]) for problem in batch]
        input_ids, attention_mask = pad_batch(prompts, tokenizer.eos_token_id, "left")
        with torch.no_grad():
            generated = policy.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=sample)
        replies = tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
        for index, problem in enumerate(batch):
            answers = [final_answer(reply) for reply in replies[index * samples : (index + 1) * samples]]
            named = sum(answer is not None and string_match(answer, problem[GROUND_TRUTH]) for answer in answers)
            rates.append(named / samples)
    return rates
