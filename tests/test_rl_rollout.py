"""PPO's rollout and optimizer step on the tiny models: where the score lands in the trainer, what the
value model is read at, gradient clipping without DeepSpeed, and the two placements on one rollout."""

import pytest
import torch

from huatuo_o1.rl import ppo_core, ppo_trainer
from tests.rl_helpers import build_ppo_trainer, rl_flags, write_problems

T, F = True, False


pytestmark = pytest.mark.usefixtures("one_thread_fresh_accelerate")


def argv(tiny_models, tmp_path, *extra, policy=None):
    return rl_flags(
        tiny_models, write_problems(tmp_path / "p.json"), str(tmp_path / "out"),
        model_name_or_path=policy or tiny_models["tiny-qwen2"],
        per_device_train_batch_size=2, gradient_accumulation_steps=1, local_rollout_forward_batch_size=2,
        total_episodes=2, num_ppo_epochs=1, kl_coef=0.1, response_length=None, temperature=None, learning_rate=None,
        logging_steps=None,
    ) + list(extra)  # fmt: skip


def test_rollout_puts_the_score_after_the_stop_token(tiny_models, tmp_path, monkeypatch):
    trainer = build_ppo_trainer(argv(tiny_models, tmp_path, "--response_length", "6"))
    tok = trainer.tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    a, b = (
        tok("Croup", add_special_tokens=False)["input_ids"][:1]
        + tok(" cough", add_special_tokens=False)["input_ids"][:1]
    )
    # as generate returns them: row 0 stops at 2 (then pad), row 1 sampled the pad id before its stop token
    generated = torch.tensor([[a, b, eos, pad], [a, pad, b, eos]])
    monkeypatch.setattr(ppo_trainer, "generate_responses", lambda *args: generated.clone())
    items = trainer.train_items[:2]
    data = trainer.rollout(items)

    # one column past the longest generation (response_length 6 allows it), so row 0's s + 1 = 3 exists
    assert data.targets.responses.tolist() == [[a, b, eos, pad, pad], [a, pad, b, eos, pad]]
    assert data.targets.ends.tolist() == [2, 0]
    assert data.targets.policy_mask.tolist() == [[T, T, T, F, F], [T, F, F, F, F]]
    assert data.targets.value_mask.tolist() == [[T, T, T, T, F], [T, T, F, F, F]]
    context = data.context_length
    assert data.attention_mask[:, context:].tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    # the score alone at s + 1 (no KL there); KL only where the policy acted
    assert (
        data.targets.rewards[0, 3].item() == data.targets.scores[0].item()
        and data.targets.rewards[1, 1].item() == data.targets.scores[1].item()
    )
    assert data.targets.kl[0, 3:].abs().sum().item() == 0 and data.targets.kl[1, 1:].abs().sum().item() == 0
    assert data.logprobs[1, 1:].abs().sum().item() == 0
    # the verifier read both responses up to their stop token (the sampled pad is a special token: skipped)
    assert data.texts == [tok.decode([a, b]), tok.decode([a, b])]
    # the value at s + 1 is the value model's output at the stop token, on the unpadded sequence
    value_model = trainer.accelerator.unwrap_model(trainer.model).value_model
    with torch.no_grad():
        hidden = value_model.model(input_ids=torch.tensor([items[0].prompt_ids + [a, b, eos]])).last_hidden_state
        expected = value_model.score(hidden)[0, -len([a, b, eos]) - 1 :, 0]  # values before a, b, eos and after eos
    torch.testing.assert_close(data.targets.values[0, :4], expected, atol=1e-5, rtol=0)
    assert data.targets.values[0, 4].item() == 0.0


def test_a_response_that_fills_response_length_scores_at_its_last_token(tiny_models, tmp_path, monkeypatch):
    trainer = build_ppo_trainer(argv(tiny_models, tmp_path, "--response_length", "4"))
    tok = trainer.tokenizer
    a = tok("Croup", add_special_tokens=False)["input_ids"][0]
    generated = torch.tensor([[a, a, a, tok.eos_token_id], [a, a, a, a]])  # stop token last / no stop token
    monkeypatch.setattr(ppo_trainer, "generate_responses", lambda *args: generated.clone())
    data = trainer.rollout(trainer.train_items[:2])
    assert data.targets.responses.shape == (2, 4) and data.targets.ends.tolist() == [3, 3]
    assert data.targets.value_mask.tolist() == [[T] * 4, [T] * 4]
    kl_part = -0.1 * data.targets.kl
    torch.testing.assert_close(data.targets.rewards[:, 3] - kl_part[:, 3], data.targets.scores)
    assert data.targets.has_eos.tolist() == [True, False]


def policy_tensors(trainer):
    return {k: v.detach().clone() for k, v in trainer.accelerator.unwrap_model(trainer.model).named_parameters()}


def test_max_grad_norm_is_applied_without_deepspeed(tiny_models, tmp_path):
    """With Adam's epsilon at 1, a first step moves each weight by lr * g / (|g| + 1) <= lr * |g|: after clipping the
    gradient norm to 1e-6 no weight may move more than lr * 1e-6 (plus float32 rounding)."""
    moved = {}
    for max_grad_norm in ("1e-6", "0"):
        trainer = build_ppo_trainer(
            argv(
                tiny_models,
                tmp_path,
                "--response_length",
                "8",
                "--temperature",
                "1.0",
                "--learning_rate",
                "1e-2",
                "--adam_epsilon",
                "1.0",
                "--max_grad_norm",
                max_grad_norm,
            )
        )
        data = trainer.rollout(trainer.batch_for_update(0))
        before = policy_tensors(trainer)
        stats = trainer.optimise(data)  # one optimizer step: 2 episodes, 1 epoch, 1 mini-batch, no accumulation
        after = policy_tensors(trainer)
        moved[max_grad_norm] = max((after[k] - before[k]).abs().max().item() for k in before)
        assert ("grad_norm" in stats) == (max_grad_norm != "0")
        if max_grad_norm != "0":
            assert stats["grad_norm"].item() > 1e-3  # the norm before clipping
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    assert moved["1e-6"] <= 1e-2 * 1e-6 + 1e-8
    assert moved["0"] > 1e-5


def test_both_placements_on_one_rollout(tiny_models, taught_policy, tmp_path, capsys):
    """docs/rl.md's figure: the largest advantage difference between the two placements on one rollout."""
    trainer = build_ppo_trainer(
        argv(
            tiny_models,
            tmp_path,
            "--response_length",
            "48",
            "--temperature",
            "1.0",
            "--per_device_train_batch_size",
            "8",
            "--local_rollout_forward_batch_size",
            "8",
            "--total_episodes",
            "8",
            "--kl_coef",
            "0.03",
            policy=taught_policy,
        )
    )
    torch.manual_seed(3)
    data = trainer.rollout(trainer.batch_for_update(0))
    cfg = trainer.config

    def recompute(score_position):
        return ppo_core.rollout_targets(
            data.sampled,
            data.verifier_scores,
            data.logprobs,
            data.ref_logprobs,
            data.raw_values,
            stop_token_id=trainer.stop_token_id,
            pad_token_id=trainer.pad_id,
            eos_token_id=trainer.tokenizer.eos_token_id,
            kl_coef=cfg.kl_coef,
            gamma=cfg.gamma,
            lam=cfg.lam,
            score_position=score_position,
        )

    after_stop, stop_token = recompute("after_stop"), recompute("stop_token")
    torch.testing.assert_close(
        after_stop.advantages, data.targets.advantages
    )  # the trainer used the original's placement
    stopped_early = (data.targets.ends + 1 < data.targets.responses.shape[1]).sum().item()
    assert stopped_early > 0  # responses with room after the stop token: there the placements differ
    mask = data.targets.policy_mask
    whitened = (after_stop.advantages - stop_token.advantages).abs()[mask].max().item()
    raw_new = after_stop.returns - after_stop.values
    raw_old = stop_token.returns - stop_token.values
    raw = (raw_new - raw_old).abs()[mask].max().item()
    assert whitened > 0 and raw > 0
    with capsys.disabled():
        print(
            f"\none rollout: {len(data.targets.ends)} responses, {stopped_early} stopped before response_length 48, "
            f"scores {data.targets.scores.tolist()}; largest |advantage(after_stop) - advantage(stop_token)| over the "
            f"policy's positions: {raw:.4f} before whitening, {whitened:.4f} whitened"
        )
