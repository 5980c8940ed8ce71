"""vLLM checks run in a child process by tests/test_vllm.py (a vLLM engine sets up torch.distributed and pins
torch's thread count in the process that creates it, which would leak into the other tests).

    python tests/vllm_helpers.py rollouts POLICY VERIFIER VALUE OUT.json

prints nothing; writes OUT.json with the token ids the checks compare:
  - greedy responses of the PPO trainer's prompts through generate() and through the attached engine, before
    any update, after one PPO update (engine not yet synced: stale), and after the engine got the new weights;
  - the sampling settings the engine uses, and the tokens it sampled after the word "The" at temperature 1,
    beside the policy's own probabilities of them (pure temperature sampling: no top-k, no top-p cut).
"""

import copy
import json
import os
import sys
import time

RESPONSE_LENGTH = 24
LEARNING_RATE = os.environ.get("VLLM_CHECK_LR", "1e-3")


START = time.time()


def mark(what):
    """Progress with seconds since the start, on stderr (shown when a test fails)."""
    print(f"[{time.time() - START:7.1f} s] {what}", file=sys.stderr, flush=True)


def rollouts(policy, verifier, value, out_path):
    import torch

    from huatuo_o1.rl.loading import prompt_ids
    from huatuo_o1.rl.ppo_trainer import generate_responses
    from huatuo_o1.training import pad_batch
    from tests.rl_helpers import build_ppo_trainer

    mark("start")
    torch.manual_seed(0)
    trainer = build_ppo_trainer(
        [
            "--model_name_or_path",
            policy,
            "--reward_model_path",
            verifier,
            "--value_model_path",
            value,
            "--dataset_name",
            "unused.json",
            "--output_dir",
            os.path.dirname(out_path),
            "--response_length",
            str(RESPONSE_LENGTH),
            "--temperature",
            "1.0",
            "--local_rollout_forward_batch_size",
            "4",
            "--per_device_train_batch_size",
            "4",
            "--gradient_accumulation_steps",
            "1",
            "--num_ppo_epochs",
            "2",
            "--total_episodes",
            "8",
            "--learning_rate",
            LEARNING_RATE,
            "--max_grad_norm",
            "0",
            "--bf16",
            "False",
            "--report_to",
            "none",
            "--seed",
            "3",
            "--use_vllm",
            "True",
        ]
    )
    mark("trainer and engine built")
    engine, items = trainer.rollout_engine, trainer.train_items[:8]
    prompts = [it.prompt_ids for it in items]
    policy_model = trainer.accelerator.unwrap_model(trainer.model).policy

    def by_generate():
        queries, mask = pad_batch(prompts, trainer.pad_id, side="left")
        policy_model.eval()
        return generate_responses(policy_model, queries, mask, trainer.greedy_config, 4, trainer.pad_id).tolist()

    result = {"stop_token_id": trainer.stop_token_id, "pad_id": trainer.pad_id, "response_length": RESPONSE_LENGTH}
    result["before"] = {"generate": by_generate(), "vllm": trainer.engine_responses(items, greedy=True).tolist()}

    mark("greedy before")
    # Another stop token than eos (as --stop_token none gives: the pad id): a short answer goes on past its eos in
    # generate(); the engine must not stop there either. Checked with the initial weights, which write an eos early
    # for this prompt (the update's weights need not).
    engine.stop_token_id = trainer.pad_id
    short = [prompt_ids(trainer.tokenizer, "What is 2+2? Answer with one number.")]
    queries, mask = pad_batch(short, trainer.pad_id, side="left")
    config = copy.deepcopy(trainer.greedy_config)
    config.eos_token_id = trainer.pad_id
    result["past_eos"] = {
        "generate": generate_responses(policy_model, queries, mask, config, 1, trainer.pad_id)[0].tolist(),
        "vllm": engine.generate(short, greedy=True)[0],
        "eos": trainer.tokenizer.eos_token_id,
    }
    engine.stop_token_id = trainer.stop_token_id
    mark("past eos")
    # One PPO update, its rollout sampled by the engine (as train() runs it).
    data = trainer.rollout(trainer.batch_for_update(0))
    result["sampled"] = data.sampled.tolist()
    mark("rollout")
    trainer.optimise(data)
    mark("optimise")
    trainer.update += 1
    result["stale_vllm"] = engine.responses(
        policy_model, engine.version, prompts, trainer.pad_id, greedy=True
    ).tolist()
    result["after"] = {"generate": by_generate(), "vllm": trainer.engine_responses(items, greedy=True).tolist()}
    result["engine_version"] = engine.version
    mark("greedy after")

    # Sampling settings, and first tokens sampled at temperature 1 beside the policy's probabilities.
    params = engine.sampling_params(greedy=False)
    result["sampling"] = {
        "temperature": params.temperature,
        "top_k": params.top_k,
        "top_p": params.top_p,
        "min_p": params.min_p,
        "max_tokens": params.max_tokens,
        "stop_token_ids": params.stop_token_ids,
        "ignore_eos": params.ignore_eos,
    }
    first_token_only = params.clone()
    first_token_only.max_tokens = 1
    # A one-word prompt: a broad next-token distribution, and 2000 prompts prefill in seconds.
    word = trainer.tokenizer("The", add_special_tokens=False)["input_ids"]
    first = engine.llm.generate([{"prompt_token_ids": word}] * 2000, first_token_only, use_tqdm=False)
    mark("first tokens sampled")
    result["first_tokens"] = [out.outputs[0].token_ids[0] for out in first]
    with torch.no_grad():
        logits = policy_model(torch.tensor([word])).logits[0, -1].float()
    result["first_token_probs"] = torch.softmax(logits, -1).tolist()
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"rollouts": rollouts}[command](*args)
