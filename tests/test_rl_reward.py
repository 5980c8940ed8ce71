"""The verifier reward: format gate, exact verifier input, threshold, truncation at the stop token."""

import os

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from huatuo_o1.answer_format import final_answer
from huatuo_o1.rl.loading import Problem
from huatuo_o1.rl.reward import RLReward, trl_reward_functions
from huatuo_o1.verifier import (
    NO_ANSWER,
    PAPER_REWARD,
    VerifierReward,
    decode_until_stop,
    load_template,
    verifier_input,
)
from tests.scripts import bench_module
from tests.verifier_helpers import ControlledVerifier

GOOD = "## Thinking\n\nFever and cough point to an infection.\n\n## Final Response\n\nPneumonia."


@pytest.fixture(scope="module")
def verifier_tokenizer(tiny_models):
    return AutoTokenizer.from_pretrained(tiny_models["tiny-verifier"])


def test_exact_verifier_input_for_a_known_response():
    text = verifier_input(final_answer(GOOD), "Community-acquired pneumonia", "<|eot_id|>")
    assert text == (
        "<Model Response>\nPneumonia.\n</Model Response>\n\n<Reference Answer>\nCommunity-acquired pneumonia\n"
        "</Reference Answer>\n\nYour task is to evaluate the model response by comparing it to the reference answer. "
        'If the model response is correct and aligns with the reference answer, output "True" . If it is incorrect or '
        'fails to select the correct option (if options are provided), output "False" . <|eot_id|>'
    )


def test_template_is_overridable(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("A={response} R={reference}{eos_token}\n")
    assert load_template(str(path)) == "A={response} R={reference}{eos_token}"
    assert verifier_input("x", "y", "</s>", load_template(str(path))) == "A=x R=y</s>"


@pytest.mark.parametrize(
    "response",
    [
        "Fever and cough.\n\n## Final Response\n\nPneumonia.",  # no "## Thinking"
        "## Thinking\n\nA.\n\n## Final Response\n\nB.\n\n## Final Response\n\nC.",  # two final responses
        "## Thinking\n\nA.\n\n## Final Response\nPneumonia.",  # no blank line after the heading
        "## Thinking\n\nA.\n\n## Thinking\n\nB.\n\n## Final Response\n\nC.",  # two thinking sections
    ],
)
def test_malformed_responses_get_zero_and_verifier_sees_no_answer(verifier_tokenizer, response):
    eos = verifier_tokenizer.eos_token
    no_answer_text = verifier_input(NO_ANSWER, "Pneumonia", eos)
    verifier = ControlledVerifier(verifier_tokenizer, {no_answer_text: 0.99})
    out = VerifierReward(verifier, verifier_tokenizer)([response], ["Pneumonia"])
    assert out.rewards.tolist() == [0.0]
    assert out.well_formed.tolist() == [False]
    assert verifier.seen == [no_answer_text]


def test_threshold_just_above_and_below_point_four(verifier_tokenizer):
    eos = verifier_tokenizer.eos_token
    responses = [GOOD, GOOD.replace("Pneumonia.", "Asthma."), GOOD.replace("Pneumonia.", "Flu.")]
    references = ["Pneumonia", "Pneumonia", "Pneumonia"]
    p_by_text = {
        verifier_input("Pneumonia.", "Pneumonia", eos): 0.401,
        verifier_input("Asthma.", "Pneumonia", eos): 0.399,
        verifier_input("Flu.", "Pneumonia", eos): 0.4,  # not strictly above
    }
    verifier = ControlledVerifier(verifier_tokenizer, p_by_text, default_p=0.99)
    out = VerifierReward(verifier, verifier_tokenizer, batch_size=2)(responses, references)
    assert out.rewards.tolist() == pytest.approx([1.0, 0.1, 0.1])
    assert out.p_correct.tolist() == pytest.approx([0.401, 0.399, 0.4], abs=1e-6)
    assert out.well_formed.tolist() == [True, True, True]
    assert sorted(verifier.seen) == sorted(p_by_text)  # exactly these texts, whole, nothing else


def test_truncation_at_the_stop_token(verifier_tokenizer):
    tok = verifier_tokenizer
    ids = tok(GOOD, add_special_tokens=False)["input_ids"]
    tail = tok("\n\n## Final Response\n\nExtra", add_special_tokens=False)["input_ids"]
    generated = ids + [tok.eos_token_id] + tail + [tok.pad_token_id] * 3
    text = decode_until_stop(tok, generated, tok.eos_token_id)
    assert text == GOOD
    assert final_answer(text) == "Pneumonia."
    # without truncation the text after the stop token would make it malformed
    assert final_answer(tok.decode(generated, skip_special_tokens=True)) is None


def test_batched_real_verifier_matches_one_by_one(tiny_models, verifier_tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["tiny-verifier"]).eval()
    responses = [GOOD, GOOD.replace("Pneumonia.", "A much longer answer about asthma and its treatment."), "bad"]
    references = ["Pneumonia", "Asthma", "Flu"]
    batched = VerifierReward(model, verifier_tokenizer, batch_size=3)(responses, references)
    single = [
        VerifierReward(model, verifier_tokenizer, batch_size=1)([r], [g]).p_correct.item()
        for r, g in zip(responses, references)
    ]
    assert batched.p_correct.tolist() == pytest.approx(single, abs=1e-5)
    assert batched.rewards[2].item() == 0.0
    assert batched.rewards[0].item() == (1.0 if single[0] > 0.4 else 0.1)


def test_trl_callables_use_the_same_rule(verifier_tokenizer):
    eos = verifier_tokenizer.eos_token
    verifier = ControlledVerifier(
        verifier_tokenizer, {verifier_input("Pneumonia.", "Pneumonia", eos): 0.9}, default_p=0.1
    )
    reward = RLReward("verifier", PAPER_REWARD, VerifierReward(verifier, verifier_tokenizer))
    (reward_fn, format_fn), weights = trl_reward_functions(reward, [Problem("q", "Asthma"), Problem("q", "Pneumonia")])
    assert reward_fn.__name__ == "verifier" and weights == [1.0, 0.0]  # trl logs rewards/verifier/mean, as before
    completions = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": "no format"}]]
    assert reward_fn(prompts=["q", "q"], completions=completions, problem=[1, 1]) == pytest.approx([1.0, 0.0])
    assert format_fn(prompts=["q", "q"], completions=completions) == [1.0, 0.0]


def test_observers_see_every_call_with_its_rewards_while_they_observe(verifier_tokenizer):
    eos = verifier_tokenizer.eos_token
    verifier = ControlledVerifier(
        verifier_tokenizer, {verifier_input("Pneumonia.", "Pneumonia", eos): 0.9}, default_p=0.1
    )
    reward, seen = VerifierReward(verifier, verifier_tokenizer), []

    def observer(called, responses, references, output):
        seen.append((called, list(responses), list(references), output.rewards.tolist()))

    reward([GOOD], ["Pneumonia"])  # before: not observed
    with VerifierReward.observe_calls(observer):
        out = reward([GOOD, "no format"], ["Pneumonia", "Asthma"])
        (reward_fn, _), _ = trl_reward_functions(RLReward("verifier", PAPER_REWARD, reward), [Problem("q", "Flu")])
        reward_fn(prompts=["q"], completions=[[{"role": "assistant", "content": GOOD}]], problem=[0])  # trl's path
    reward([GOOD], ["Pneumonia"])  # after: not observed
    assert seen == [
        (reward, [GOOD, "no format"], ["Pneumonia", "Asthma"], pytest.approx([1.0, 0.0])),
        (reward, [GOOD], ["Flu"], pytest.approx([0.1])),
    ]
    assert seen[0][3] == out.rewards.tolist() and VerifierReward._observers == []


# ---- the verifier as shipped ----------------------------------------------------------------------
def shipped_verifier(tiny_models, folder, padding_side, pad_is_eos=True):
    """A copy of the tiny verifier as a checkpoint could ship it: pad = eos (tokenizer and config), this padding."""
    import json
    import shutil

    shutil.copytree(tiny_models["tiny-verifier"], folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if pad_is_eos:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    tokenizer_config = json.load(open(os.path.join(folder, "tokenizer_config.json")))
    tokenizer_config["padding_side"] = padding_side  # (save_pretrained does not write it)
    json.dump(tokenizer_config, open(os.path.join(folder, "tokenizer_config.json"), "w"))
    config = json.load(open(os.path.join(folder, "config.json")))
    config["pad_token_id"] = tokenizer.pad_token_id
    json.dump(config, open(os.path.join(folder, "config.json"), "w"))
    return str(folder)


TEXTS = [
    ("ACE", "ACE inhibitor"),
    ("The answer is an ACE inhibitor such as lisinopril, taken daily.", "ACE inhibitor"),
    ("Croup", "Bladder cancer"),
]


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_verifier_padding_with_eos_is_read_before_the_eos_as_the_unmodified_model_reads_it(
    tiny_models, tmp_path, padding_side
):
    folder = shipped_verifier(tiny_models, tmp_path / "verifier", padding_side)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.pad_token_id
    assert tokenizer.padding_side == padding_side
    texts = [verifier_input(r, ref, tokenizer.eos_token) for r, ref in TEXTS]
    singles = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert len({len(ids) for ids in singles}) == 3 and all(ids[-1] == tokenizer.eos_token_id for ids in singles)
    with torch.no_grad():
        # the reference: the unmodified model on each input alone, unpadded; and by hand, the token before the eos
        alone = torch.cat([model(input_ids=torch.tensor([ids])).logits for ids in singles])
        by_hand = torch.stack(
            [model.score(model.model(input_ids=torch.tensor([ids])).last_hidden_state)[0, -2] for ids in singles]
        )
    torch.testing.assert_close(alone, by_hand, atol=1e-6, rtol=0)

    reward = VerifierReward(model, tokenizer, batch_size=3)  # one padded batch of three lengths
    torch.testing.assert_close(reward.p_correct(texts), torch.softmax(alone, -1)[:, 1], atol=1e-5, rtol=0)
    # nothing was changed on the shipped tokenizer or config
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == model.config.pad_token_id
    assert tokenizer.padding_side == padding_side


def test_rl_stage2_loads_the_verifier_as_shipped(tiny_models, tmp_path):
    from huatuo_o1.rl.config import parse_args
    from huatuo_o1.rl.loading import load_models

    folder = shipped_verifier(tiny_models, tmp_path / "verifier", "left")
    _, config, model_args = parse_args(
        [
            "--model_name_or_path",
            tiny_models["tiny-qwen2"],
            "--reward_model_path",
            folder,
            "--value_model_path",
            tiny_models["tiny-value"],
            "--output_dir",
            str(tmp_path / "out"),
            "--bf16",
            "False",
            "--report_to",
            "none",
        ]
    )
    models = load_models(model_args, config)
    tokenizer, verifier, verifier_tokenizer = models.tokenizer, models.verifier, models.verifier_tokenizer
    shipped = AutoTokenizer.from_pretrained(folder)
    assert verifier_tokenizer.pad_token_id == verifier.config.pad_token_id == shipped.eos_token_id
    assert len(verifier_tokenizer) == len(shipped) and verifier_tokenizer.padding_side == "left"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id  # the policy's own pad stays distinct


def test_verifier_without_a_pad_id_is_scored_one_input_at_a_time(tiny_models, verifier_tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_models["tiny-verifier"]).eval()
    model.config.pad_token_id = None  # HF then reads the last token and refuses batches of more than one
    texts = [verifier_input(r, ref, verifier_tokenizer.eos_token) for r, ref in TEXTS]
    with torch.no_grad():
        alone = torch.cat(
            [model(**verifier_tokenizer(t, add_special_tokens=False, return_tensors="pt")).logits for t in texts]
        )
    p = VerifierReward(model, verifier_tokenizer, batch_size=3).p_correct(texts)
    torch.testing.assert_close(p, torch.softmax(alone, -1)[:, 1], atol=1e-6, rtol=0)


def test_softmax_and_rewards_in_the_verifiers_dtype(tiny_models, verifier_tokenizer):
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_models["tiny-verifier"], dtype=torch.bfloat16
    ).eval()
    reward = VerifierReward(model, verifier_tokenizer, batch_size=1)
    text = verifier_input("Croup", "Croup", verifier_tokenizer.eos_token)
    with torch.no_grad():
        logits = model(**verifier_tokenizer(text, add_special_tokens=False, return_tensors="pt")).logits
    assert logits.dtype == torch.bfloat16
    assert (
        reward.p_correct([text]).tolist() == torch.softmax(logits, -1)[:, 1].float().tolist()
    )  # bf16 softmax, exactly


def test_threshold_compares_the_probability_as_a_python_float(verifier_tokenizer, monkeypatch):
    # bf16 0.400390625 is above 0.4 as a float (the original's p.item() > 0.4), though 0.4 itself rounds to it in bf16
    reward = VerifierReward(torch.nn.Linear(1, 1), verifier_tokenizer)
    monkeypatch.setattr(
        reward, "probabilities", lambda texts: torch.tensor([0.400390625, 0.3984375], dtype=torch.bfloat16)
    )
    out = reward([GOOD, GOOD], ["Pneumonia", "Pneumonia"])
    assert out.rewards.dtype == torch.bfloat16
    assert out.rewards.tolist() == [1.0, 0.10009765625]  # 0.1 as bf16 holds it, as the original's reward tensor did


def test_the_rl_learning_bench_logs_each_reward_call_as_the_reward_rule_says(verifier_tokenizer):
    """bench/rl_learning.py's record of a reward call, through the reward's public hook and its values (a wrong
    attribute name there once stopped every bench run at its first reward call)."""
    bench = bench_module("rl_learning")
    eos = verifier_tokenizer.eos_token
    responses = [GOOD, GOOD.replace("Pneumonia.", "Asthma."), "no layout", GOOD.replace("Pneumonia.", "Pneumonia!")]
    p_by_text = {
        verifier_input("Pneumonia.", "Pneumonia", eos): 0.9,  # right, and string match agrees
        verifier_input("Asthma.", "Pneumonia", eos): 0.7,  # called right: string match disagrees
        verifier_input("Pneumonia!", "Pneumonia", eos): 0.2,  # called wrong: string match disagrees
    }
    verifier = ControlledVerifier(verifier_tokenizer, p_by_text, default_p=0.99)  # the malformed one: reward 0
    reward = VerifierReward(verifier, verifier_tokenizer, correct_reward=2.0, incorrect_reward=0.5)
    records = []
    with VerifierReward.observe_calls(lambda *call: records.append(bench.reward_call_record(*call))):
        out = reward(responses, ["Pneumonia"] * 4)
    assert out.rewards.tolist() == [2.0, 2.0, 0.0, 0.5]
    (record,) = records
    assert record["n"] == 4 and record["reward"] == pytest.approx(4.5 / 4)
    assert record["format_rate"] == 0.75 and record["string_match"] == 0.5  # the right answer, twice worded
    assert record["verifier_agrees"] == pytest.approx(1 / 3)  # of the 3 well-formed answers
    assert record["rewards_right_wrong"] == [2.0, 0.5] and record["references"] == ["Pneumonia"] * 4
