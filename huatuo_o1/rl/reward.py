"""The RL reward of a response to a problem (RL_stage2.py --reward_mode): the verifier's, a rule's, or both.

- verifier (the paper's, the default): huatuo_o1/verifier.py's rule on every response, the verifier loaded in this
  process (--reward_model_path) or served by serve_verifier.py (--reward_url, huatuo_o1/verifier_service.py).
- rule: no model. A closed-set problem (the data recipe's medical_closed_set rows, which carry their options and the
  right letter) is answered right when the evaluation's honest reader (huatuo_o1/evaluation/scoring.py) finds the
  right option in the final answer, by its letter or its text, and no other one first or last; any other problem
  when the final answer equals the ground truth once both are put through `normalised_answer`.
- hybrid: the rule for closed-set problems, the verifier for the rest.

In every mode a response whose layout is broken (huatuo_o1/answer_format.py) gets the malformed reward (0.0), whatever
would have judged it otherwise. Each reward comes with its source ("verifier", "rule" or "layout"), which the logs
count per update. The rewards are in the verifier's dtype where a verifier takes part, as the paper's were, and
float32 in rule mode.
"""

import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from huatuo_o1.answer_format import final_answer
from huatuo_o1.decontamination import nfkc_lower_single_spaced
from huatuo_o1.evaluation.scoring import clean_reply, honest_extract
from huatuo_o1.records import InputError
from huatuo_o1.rl.config import REWARD_MODES, PPOConfig, ScriptArguments
from huatuo_o1.rl.loading import Models, Problem
from huatuo_o1.verifier import RewardOutput, RewardValues, VerifierReward
from huatuo_o1.verifier_service import DTYPES, ServedVerifier

SOURCES = ("verifier", "rule", "layout")  # who decided a reward; "layout": a broken one, whatever the mode


def normalised_answer(text: str) -> str:
    """What the rule compares an open-ended answer by: NFKC, lower case, every punctuation mark a space, whitespace
    runs one space (none beside a CJK character), stripped. "Vitamin C." and "vitamin  c" are equal;
    "N-acetylcysteine" is "n acetylcysteine"; symbols such as "+" and "%" stay."""
    text = unicodedata.normalize("NFKC", text)
    return nfkc_lower_single_spaced("".join(" " if unicodedata.category(c).startswith("P") else c for c in text))


def rule_says_right(answer: str, problem: Problem) -> bool:
    """The rule's verdict on a final answer: a closed-set problem's right option, read by the evaluation's honest
    reader, first and last; an open-ended problem's ground truth after normalisation."""
    if problem.options is None:
        return normalised_answer(answer) == normalised_answer(problem.reference)
    found = honest_extract(clean_reply(answer), problem.options)
    right = problem.answer_idx.lower()
    return found.first is not None and found.first.lower() == right and found.last.lower() == right


def reward_sources(mode: str, responses: list[str], problems: list[Problem]) -> list[str]:
    """Who decides each response's reward in this mode: the layout when it is broken, else the rule or the verifier."""
    sources = []
    for response, problem in zip(responses, problems, strict=True):
        if final_answer(response) is None:
            sources.append("layout")
        elif mode == "rule" or (mode == "hybrid" and problem.options is not None):
            sources.append("rule")
        else:
            sources.append("verifier")
    return sources


@dataclass
class RLRewardOutput(RewardOutput):
    sources: list[str] = field(default_factory=list)  # one of SOURCES per response


class RLReward:
    """reward(response texts, problems) -> RLRewardOutput, by --reward_mode; `verifier` is a VerifierReward (this
    process) or a ServedVerifier (--reward_url), None in rule mode. `model` is the in-process verifier's, so that a
    trainer can place it on its device (None otherwise)."""

    def __init__(
        self,
        mode: str,
        values: RewardValues,
        verifier: "VerifierReward | ServedVerifier | None" = None,
        dtype: torch.dtype = torch.float32,
    ):
        if mode not in REWARD_MODES or (verifier is None) != (mode == "rule"):
            raise ValueError(f"reward mode {mode!r} with verifier {verifier!r}")
        self.mode, self.values, self.verifier, self.dtype = mode, values, verifier, dtype

    @property
    def model(self) -> torch.nn.Module | None:
        return getattr(self.verifier, "model", None)

    @model.setter
    def model(self, model: torch.nn.Module) -> None:
        self.verifier.model = model

    def __call__(self, responses: list[str], problems: list[Problem]) -> RLRewardOutput:
        sources = reward_sources(self.mode, responses, problems)
        if self.mode == "verifier":  # the paper's: every response through the verifier, a broken one too
            output = self.verifier(responses, [problem.reference for problem in problems])
            return RLRewardOutput(output.rewards, output.well_formed, output.p_correct, sources)
        values, count = self.values, len(responses)
        rewards = torch.full((count,), values.malformed, dtype=self.dtype)
        p_correct = torch.full((count,), float("nan"))  # the verifier's, where it was asked
        for row in (row for row, source in enumerate(sources) if source == "rule"):
            right = rule_says_right(final_answer(responses[row]), problems[row])
            rewards[row] = values.correct if right else values.incorrect
        asked = [row for row, source in enumerate(sources) if source == "verifier"]
        if asked:
            output = self.verifier([responses[row] for row in asked], [problems[row].reference for row in asked])
            rewards[asked], p_correct[asked] = output.rewards.to(self.dtype), output.p_correct
        if isinstance(self.verifier, VerifierReward) and sharded():
            # every process must make the same number of verifier passes (ZeRO-3 gathers its weights in each)
            self.verifier.idle_forward_passes(
                self.verifier.forward_passes(count) - self.verifier.forward_passes(len(asked))
            )
        well_formed = torch.tensor([source != "layout" for source in sources], dtype=torch.bool)
        return RLRewardOutput(rewards, well_formed, p_correct, sources)


def sharded() -> bool:
    """Whether this is one of several training processes (whose in-process verifier may be sharded over them)."""
    distributed = torch.distributed
    return distributed.is_available() and distributed.is_initialized() and distributed.get_world_size() > 1


def reward_values(config: PPOConfig) -> RewardValues:
    return RewardValues(
        config.correct_reward, config.incorrect_reward, config.malformed_reward, config.verifier_threshold
    )


def check_reward_source(config: PPOConfig, script_args: ScriptArguments, verify: str | None = None) -> None:
    """Before anything loads: the verifier the mode needs is there (a 2-label classifier to load, its files matching
    its manifest as `verify` says, or a server that answers); one InputError line otherwise."""
    from huatuo_o1.models import check_verifier_config

    if config.reward_mode == "rule":
        return
    if config.reward_url:
        if script_args.verifier_template:
            raise InputError(
                "--verifier_template with --reward_url: the server fills its own template (pass it to "
                "serve_verifier.py --verifier_template)"
            )
        ServedVerifier(config.reward_url, timeout=config.reward_timeout, retries=config.reward_retries).health()
    elif config.reward_model_path:
        check_verifier_config(config.reward_model_path, "--reward_model_path", verify)
    else:
        raise InputError(
            f"--reward_model_path is required with --reward_mode {config.reward_mode} (or --reward_url of a running "
            "serve_verifier.py; --reward_mode rule needs no verifier)"
        )


def build_reward(config: PPOConfig, script_args: ScriptArguments, models: Models) -> RLReward:
    """The run's reward, as its flags say."""
    values = reward_values(config)
    if config.reward_mode == "rule":
        return RLReward("rule", values)
    if config.reward_url:
        served = ServedVerifier(config.reward_url, values, config.reward_timeout, config.reward_retries)
        return RLReward(config.reward_mode, values, served, DTYPES[served.health()["dtype"]])
    verifier = VerifierReward(
        models.verifier,
        models.verifier_tokenizer,
        template=script_args.verifier_template,
        batch_size=config.local_rollout_forward_batch_size,
        threshold=values.threshold,
        correct_reward=values.correct,
        incorrect_reward=values.incorrect,
        malformed_reward=values.malformed,
    )
    return RLReward(config.reward_mode, values, verifier, models.verifier.dtype)


def completion_text(completion) -> str:
    # trl passes conversational completions as [{"role": "assistant", "content": ...}]
    return completion[0]["content"] if isinstance(completion, list) else completion


def trl_reward_functions(reward: RLReward, problems: list[Problem]) -> tuple[list[Callable], list[float]]:
    """Callables for trl's GRPOTrainer / RLOOTrainer and their weights: the reward (1), the format rate (0: logged
    only) and, in rule and hybrid modes, the share of each source (0: logged only). The dataset's `problem` column (an
    index into `problems`) arrives by name. trl logs each as rewards/<name>/mean: the reward under the mode's name
    (rewards/verifier/mean in the paper's mode), the shares as rewards/from_<source>/mean."""

    def score(prompts, completions, problem, **kwargs):
        return reward([completion_text(c) for c in completions], [problems[i] for i in problem]).rewards.tolist()

    def format_ok(prompts, completions, **kwargs):
        return [float(final_answer(completion_text(c)) is not None) for c in completions]

    def share_from(source):
        def from_source(prompts, completions, problem, **kwargs):
            texts = [completion_text(c) for c in completions]
            return [float(s == source) for s in reward_sources(reward.mode, texts, [problems[i] for i in problem])]

        from_source.__name__ = f"from_{source}"
        return from_source

    score.__name__ = reward.mode
    functions, weights = [score, format_ok], [1.0, 0.0]
    if reward.mode != "verifier":
        functions += [share_from(source) for source in SOURCES]
        weights += [0.0] * len(SOURCES)
    return functions, weights
