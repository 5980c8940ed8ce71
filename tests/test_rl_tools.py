"""Sampled pass rates and a truncated value model: what bench/rl_learning.py measures with and builds."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from huatuo_o1.records import GROUND_TRUTH, OPEN_QUESTION
from huatuo_o1.rl.pass_rates import sampled_pass_rates
from huatuo_o1.rl.value_model import truncated_value_model
from tests.rl_helpers import PROBLEMS, teach_answer_layout
from tests.scripts import bench_module

pytestmark = pytest.mark.usefixtures("one_thread_fresh_accelerate")


@pytest.fixture(scope="module")
def answering_policy(tiny_models, tmp_path_factory):
    """tiny-qwen2 taught long enough to give each of PROBLEMS its reference answer when sampled cool."""
    folder, loss = teach_answer_layout(tiny_models["tiny-qwen2"], tmp_path_factory.mktemp("answering"), steps=150)
    assert loss < 0.1
    return folder


def test_pass_rates_count_the_sampled_answers_that_name_the_reference(answering_policy):
    problems = [{OPEN_QUESTION: question, GROUND_TRUTH: answer} for question, answer in PROBLEMS]
    assert sampled_pass_rates(answering_policy, problems, 4, 0.3, 100, seed=0) == [1.0] * len(problems)
    # each problem given another one's answer as reference: the same answers now name no reference
    others = [dict(p, **{GROUND_TRUTH: problems[i - 1][GROUND_TRUTH]}) for i, p in enumerate(problems)]
    assert sampled_pass_rates(answering_policy, others, 4, 0.3, 100, seed=0) == [0.0] * len(problems)
    # too few tokens to reach "## Final Response": no final answer, so nothing names the reference
    assert sampled_pass_rates(answering_policy, problems, 4, 0.3, 5, seed=0) == [0.0] * len(problems)
    # hot sampling: shares in quarters, and the same seed draws the same answers
    hot = sampled_pass_rates(answering_policy, problems, 4, 1.0, 100, seed=3)
    assert hot == sampled_pass_rates(answering_policy, problems, 4, 1.0, 100, seed=3)
    assert all(rate * 4 == int(rate * 4) for rate in hot) and 0 < sum(hot) < len(problems)


def test_truncated_value_model_keeps_the_bases_first_blocks_under_a_new_seeded_head(tiny_models, tmp_path):
    base = tiny_models["tiny-llama"]
    truncated_value_model(base, 1, tmp_path / "a")
    truncated_value_model(base, 1, tmp_path / "b")
    full = AutoModelForCausalLM.from_pretrained(base).model.state_dict()
    value, again = (AutoModelForSequenceClassification.from_pretrained(tmp_path / name) for name in ("a", "b"))
    assert value.config.num_labels == 1 and value.config.num_hidden_layers == 1 < len(full_layers(full))
    kept = value.model.state_dict()
    assert set(kept) == {name for name in full if not name.startswith("layers.") or name.startswith("layers.0.")}
    assert all(torch.equal(kept[name], full[name]) for name in kept)
    assert torch.equal(value.score.weight, again.score.weight)  # the new head is seeded
    assert AutoTokenizer.from_pretrained(tmp_path / "a").get_vocab() == AutoTokenizer.from_pretrained(base).get_vocab()


def full_layers(state_dict):
    return {name.split(".")[1] for name in state_dict if name.startswith("layers.")}


def test_the_rl_learning_bench_keeps_each_fact_once_the_vignette_nearest_half_right():
    """A fact asked twice (data/demo_data.json's twins) is trained or held out once, never both."""
    bench = bench_module("rl_learning")
    items = [{GROUND_TRUTH: answer} for answer in ("Gout", "Lithium", "Gout", "Croup", "Lithium", "Croup", "Asthma")]
    rates = [0.25, 0.5, 0.625, 0.75, 0.5, 0.25, 0.875]
    # Gout: 0.625 is nearer 0.5 than 0.25; Lithium: a tie, the earlier; Croup: 0.75 and 0.25 tie, the earlier;
    # Asthma: alone. Index 3 left out of the chosen ones: Croup keeps 5.
    assert bench.one_vignette_per_fact(items, rates, [0, 1, 2, 3, 4, 5, 6]) == [1, 2, 3, 6]
    assert bench.one_vignette_per_fact(items, rates, [0, 1, 2, 4, 5, 6]) == [1, 2, 5, 6]
    assert bench.one_vignette_per_fact(items, rates, []) == []
