"""The medical verifier as a reward: format gate, verifier input, probability -> reward.

This is the one place that knows the verifier's input layout (templates/verifier_input.txt,
the published verifier's format) and the reward rule; a script that trains a verifier builds
its inputs with `verifier_input` so both sides agree.

Rule (SPEC.md): a response is well-formed when it has exactly one "## Thinking" and exactly one
"## Final Response\\n\\n"; the final answer is the text after the latter, stripped.
Malformed -> 0.0 (the verifier is still run, on "I do not know the answer.", so every process
makes the same number of verifier calls under ZeRO-3). Well-formed -> p = softmax(logits)[1];
1.0 if p > 0.4 else 0.1.
"""

import os
from dataclasses import dataclass

import torch

TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "templates", "verifier_input.txt")
THINKING_MARK = "## Thinking"
FINAL_MARK = "## Final Response\n\n"
NO_ANSWER = "I do not know the answer."
MAX_VERIFIER_TOKENS = 4000


def load_template(path=None):
    """The verifier input template; a single trailing newline (added by editors) is dropped."""
    with open(path or TEMPLATE_PATH, encoding="utf-8") as f:
        text = f.read()
    return text[:-1] if text.endswith("\n") else text


def verifier_input(final_answer, reference, eos_token, template=None):
    """The exact text the verifier reads for one answer and its reference."""
    template = load_template() if template is None else template
    return template.format(response=final_answer, reference=reference, eos_token=eos_token or "")


def final_answer(response):
    """The stripped text after "## Final Response\\n\\n", or None when the response is malformed."""
    if response.count(THINKING_MARK) != 1 or response.count(FINAL_MARK) != 1:
        return None
    return response.split(FINAL_MARK, 1)[1].strip()


def decode_until_stop(tokenizer, token_ids, stop_token_id):
    """Decode a generated response up to (not including) its first stop token."""
    token_ids = list(token_ids)
    if stop_token_id in token_ids:
        token_ids = token_ids[: token_ids.index(stop_token_id)]
    return tokenizer.decode(token_ids, skip_special_tokens=True)


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # float, one per response
    well_formed: torch.Tensor  # bool
    p_correct: torch.Tensor  # verifier's probability of label 1 ("True")


class VerifierReward:
    """Scores (response, reference) pairs with a 2-label sequence-classification verifier."""

    def __init__(self, model, tokenizer, template=None, batch_size=8, threshold=0.4,
                 correct_reward=1.0, incorrect_reward=0.1, malformed_reward=0.0, max_length=MAX_VERIFIER_TOKENS):
        self.model, self.tokenizer = model, tokenizer
        self.template = load_template(template) if template is None or os.path.isfile(template) else template
        self.batch_size, self.threshold, self.max_length = batch_size, threshold, max_length
        self.correct_reward, self.incorrect_reward, self.malformed_reward = correct_reward, incorrect_reward, malformed_reward

    def inputs(self, responses, references):
        answers = [final_answer(r) for r in responses]
        texts = [
            verifier_input(NO_ANSWER if a is None else a, ref, self.tokenizer.eos_token, self.template)
            for a, ref in zip(answers, references)
        ]
        return texts, torch.tensor([a is not None for a in answers], dtype=torch.bool)

    @torch.no_grad()
    def p_correct(self, texts):
        device = next(self.model.parameters()).device
        probabilities = []
        for start in range(0, len(texts), self.batch_size):
            encoded = [
                self.tokenizer(t, add_special_tokens=False, truncation=True, max_length=self.max_length)
                for t in texts[start : start + self.batch_size]
            ]
            batch = self.tokenizer.pad(encoded, return_tensors="pt").to(device)
            logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            probabilities.append(torch.softmax(logits.float(), dim=-1)[:, 1].cpu())
        return torch.cat(probabilities) if probabilities else torch.zeros(0)

    def __call__(self, responses, references):
        texts, well_formed = self.inputs(responses, references)
        p = self.p_correct(texts)
        rewards = torch.where(p > self.threshold, self.correct_reward, self.incorrect_reward)
        rewards = torch.where(well_formed, rewards, torch.full_like(rewards, self.malformed_reward))
        return RewardOutput(rewards=rewards, well_formed=well_formed, p_correct=p)


def _completion_text(completion):
    # trl passes conversational completions as [{"role": "assistant", "content": ...}]
    return completion[0]["content"] if isinstance(completion, list) else completion


def trl_reward_functions(verifier_reward):
    """Callables for trl's GRPOTrainer / RLOOTrainer: the verifier reward and (weight 0, for the logs) the format rate.

    The dataset's `reference` column arrives by name.
    """

    def verifier_reward_fn(prompts, completions, reference, **kwargs):
        return verifier_reward([_completion_text(c) for c in completions], reference).rewards.tolist()

    def format_ok(prompts, completions, **kwargs):
        return [float(final_answer(_completion_text(c)) is not None) for c in completions]

    verifier_reward_fn.__name__ = "verifier"
    return [verifier_reward_fn, format_ok]
