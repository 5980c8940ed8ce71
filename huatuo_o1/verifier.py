"""The medical verifier as a reward: format gate, verifier input, probability -> reward.

This is the one place that knows the verifier's input layout (templates/verifier_input.txt,
the published verifier's format) and the reward rule; train_verifier.py builds its inputs with
`verifier_input` too, so both sides agree.

Rule: a response is well-formed as huatuo_o1.answer_format says (exactly one "## Thinking" and
exactly one "## Final Response\\n\\n"); the final answer is the text after the latter, stripped.
Malformed -> 0.0 (the verifier is still run, on "I do not know the answer.", so every process
makes the same number of verifier calls under ZeRO-3). Well-formed -> p = softmax(logits)[1];
1.0 if p > 0.4 else 0.1. These four numbers are the paper's (PAPER_REWARD); RL_stage2.py's flags can change them.

The verifier is used as shipped (tokenizer and config untouched): a Hugging Face sequence
classifier reads its logits at the last token that is not its config's pad token id. Batches are
padded on the right with that id, so every input is read where it would be read alone; when the
shipped pad token is the eos the template appends, that is the token before the eos (what the
published verifier ran with). As the original, the softmax runs in the model's dtype and the
rewards keep it (in bf16 the 0.1 reward is 0.10009765625).
"""

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from huatuo_o1.answer_format import final_answer
from huatuo_o1.models import check_verifier_config, from_pretrained_or_explain
from huatuo_o1.records import read_text
from huatuo_o1.training import pad_batch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates", "verifier_input.txt")
NO_ANSWER = "I do not know the answer."
MAX_VERIFIER_TOKENS = 4000


def load_template(path: str | None = None) -> str:
    """The verifier input template; a single trailing newline (added by editors) is dropped."""
    text = read_text(path or TEMPLATE_PATH, "verifier input template")
    return text[:-1] if text.endswith("\n") else text


def verifier_input(answer: str, reference: str, eos_token: str | None, template: str | None = None) -> str:
    """The exact text the verifier reads for one answer and its reference."""
    template = load_template() if template is None else template
    return template.format(response=answer, reference=reference, eos_token=eos_token or "")


def decode_until_stop(
    tokenizer: "PreTrainedTokenizerBase", token_ids: Sequence[int], stop_token_id: int | None
) -> str:
    """Decode a generated response up to (not including) its first stop token."""
    token_ids = list(token_ids)
    if stop_token_id in token_ids:
        token_ids = token_ids[: token_ids.index(stop_token_id)]
    return tokenizer.decode(token_ids, skip_special_tokens=True)


def verifier_pad_id(model: torch.nn.Module) -> int | None:
    """The pad token id of the verifier's own config (None when it has none)."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    return getattr(config, "pad_token_id", None)


def load_verifier(
    path: str, dtype: torch.dtype = torch.float32, flag: str = "verifier", **kwargs
) -> tuple[torch.nn.Module, "PreTrainedTokenizerBase"]:
    """(model, tokenizer) of a 2-label verifier exactly as shipped: tokenizer and config untouched.

    Anything but a 2-label sequence classifier stops before loading (flag names the path in the message).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    check_verifier_config(path, flag)
    tokenizer = from_pretrained_or_explain(
        AutoTokenizer, path, trust_remote_code=kwargs.get("trust_remote_code", False)
    )
    model = from_pretrained_or_explain(AutoModelForSequenceClassification, path, num_labels=2, dtype=dtype, **kwargs)
    return model.eval(), tokenizer


@dataclass(frozen=True)
class RewardValues:
    """The reward rule's numbers: what a right, a wrong and a malformed answer get, and the verifier's threshold."""

    correct: float = 1.0
    incorrect: float = 0.1
    malformed: float = 0.0
    threshold: float = 0.4  # a well-formed answer is right when the verifier's p(correct) is above it


PAPER_REWARD = RewardValues()  # the original's rule


@dataclass
class RewardOutput:
    rewards: torch.Tensor  # one per response, in the verifier's dtype
    well_formed: torch.Tensor  # bool
    p_correct: torch.Tensor  # verifier's probability of label 1 ("True")


class VerifierReward:
    """Scores (response, reference) pairs with a 2-label sequence-classification verifier.

    `with VerifierReward.observe_calls(observer):` observer(reward, responses, references, output) follows every
    call of every VerifierReward in this process while the block runs: the way to log the reward calls of a run
    one does not build oneself (bench/rl_learning.py logs those of RL_stage2.py, whole).
    """

    _observers: ClassVar[list[Callable[["VerifierReward", list[str], list[str], RewardOutput], None]]] = []

    @classmethod
    @contextmanager
    def observe_calls(
        cls, observer: Callable[["VerifierReward", list[str], list[str], RewardOutput], None]
    ) -> Iterator[None]:
        cls._observers.append(observer)
        try:
            yield
        finally:
            cls._observers.remove(observer)

    def __init__(
        self,
        model,
        tokenizer,
        template=None,
        batch_size=8,
        threshold=PAPER_REWARD.threshold,
        correct_reward=PAPER_REWARD.correct,
        incorrect_reward=PAPER_REWARD.incorrect,
        malformed_reward=PAPER_REWARD.malformed,
        max_length=MAX_VERIFIER_TOKENS,
    ):
        self.model, self.tokenizer = model, tokenizer
        # read now: under DeepSpeed `model` is later replaced by an engine whose .config is DeepSpeed's
        self.pad_id = verifier_pad_id(model)
        self.template = load_template(template) if template is None or os.path.isfile(template) else template
        self.batch_size, self.max_length = batch_size, max_length
        self.values = RewardValues(correct_reward, incorrect_reward, malformed_reward, threshold)

    def inputs(self, responses: list[str], references: list[str]) -> tuple[list[str], torch.Tensor]:
        answers = [final_answer(r) for r in responses]
        texts = [
            verifier_input(NO_ANSWER if a is None else a, ref, self.tokenizer.eos_token, self.template)
            for a, ref in zip(answers, references)
        ]
        return texts, torch.tensor([a is not None for a in answers], dtype=torch.bool)

    @torch.no_grad()
    def probabilities(self, texts: list[str]) -> torch.Tensor:
        """p(label 1) for each text, in the verifier's dtype."""
        device = next(self.model.parameters()).device
        # without a pad id in its config the classifier reads the last token and refuses batches: one at a time
        batch_size = self.batch_size if self.pad_id is not None else 1
        probabilities = []
        for start in range(0, len(texts), batch_size):
            encoded = [
                self.tokenizer(t, add_special_tokens=False, truncation=True, max_length=self.max_length)["input_ids"]
                for t in texts[start : start + batch_size]
            ]
            input_ids, attention_mask = pad_batch(encoded, self.pad_id, side="right")
            logits = self.model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            probabilities.append(torch.softmax(logits, dim=-1)[:, 1].cpu())
        return torch.cat(probabilities) if probabilities else torch.zeros(0)

    def p_correct(self, texts: list[str]) -> torch.Tensor:
        return self.probabilities(texts).float()

    def forward_passes(self, count: int) -> int:
        """How many forward passes `probabilities` makes for `count` texts."""
        batch_size = self.batch_size if self.pad_id is not None else 1
        return -(-count // batch_size)

    @torch.no_grad()
    def idle_forward_passes(self, count: int) -> None:
        """`count` forward passes on one token, results unused: where the verifier is sharded over processes (ZeRO-3)
        each pass is collective, so a process that scored fewer texts than the others makes up the difference."""
        device = next(self.model.parameters()).device
        token = self.tokenizer(NO_ANSWER, add_special_tokens=False)["input_ids"][:1]
        for _ in range(count):
            self.model(input_ids=torch.tensor([token], device=device))

    def __call__(
        self, responses: list[str], references: list[str], values: RewardValues | None = None
    ) -> RewardOutput:
        """The rewards of the responses against their references, by this verifier's rule (or `values`')."""
        values = values or self.values
        texts, well_formed = self.inputs(responses, references)
        p = self.probabilities(texts)
        # the threshold compares the probability as a Python float, like the original's p.item() > 0.4
        correct, incorrect = (torch.tensor(value, dtype=p.dtype) for value in (values.correct, values.incorrect))
        rewards = torch.where(p.double() > values.threshold, correct, incorrect)
        rewards = torch.where(well_formed, rewards, torch.full_like(rewards, values.malformed))
        output = RewardOutput(rewards=rewards, well_formed=well_formed, p_correct=p.float())
        for observer in self._observers:
            observer(self, responses, references, output)
        return output
