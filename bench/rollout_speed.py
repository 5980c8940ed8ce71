"""Rollout sampling speed: the PPO trainer's `generate` path vs. its colocated vLLM engine; one PPO update each way.

    python bench/rollout_speed.py [--model .cache/models/SmolLM2-135M-Instruct] [--grid 16x128,64x256]
                                  [--ppo 16x128] [--threads 2] [--kv_cache_gib 2]

1. Sampling grid: for each batch x new tokens, the same prompts (our demo exam questions in the chat
   template, float32, temperature 0.7, no top-k/top-p) through `generate` (one batch) and through the
   vLLM engine RL_stage2.py --use_vllm builds (in this process, weights pushed from the same model).
   Every response is made exactly `new tokens` long (the stop token is ignored) so both paths sample
   the same number of tokens; tokens/s and the ratio per cell.
2. One PPO update each way (the model as policy, reference and value model; a 2-label head on it as
   verifier), `--ppo` prompts x response length, one PPO epoch: wall time of sampling, scoring
   (policy, reference and value forward passes and the verifier) and optimisation, and, for vLLM, the
   weight push after the update.
Prints the machine's load before and after: figures taken while other jobs run are slower and noisier.
"""

import gc
import json
import os
import time

import torch

from huatuo_o1 import cli
from huatuo_o1.records import read_json

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TEMPERATURE = 0.7


def exam_prompts(tokenizer, n):
    questions = [row["question"] for row in read_json(os.path.join(REPO, "data", "demo_data.json"))]
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in (questions * (n // len(questions) + 1))[:n]
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def sampling_grid(model_dir, grid, kv_cache_gib):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from huatuo_o1.rl.vllm_rollout import VLLMRollout, shutdown_engine
    from huatuo_o1.training import pad_batch

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    longest = max(len(p) for p in exam_prompts(tokenizer, max(b for b, _ in grid)))
    start = time.perf_counter()
    engine = VLLMRollout(
        policy,
        response_length=max(n for _, n in grid),
        temperature=TEMPERATURE,
        stop_token_id=None,
        max_model_len=longest + max(n for _, n in grid),
        seed=0,
        kv_cache_gib=kv_cache_gib,
    )
    engine_start = time.perf_counter() - start
    push = engine.sync(policy, 0)
    warm = exam_prompts(tokenizer, 2)  # first calls of each path pay one-off costs
    engine.response_length = 8
    engine.generate(warm)
    with torch.no_grad():
        policy.generate(input_ids=torch.tensor([warm[0]]), max_new_tokens=8, do_sample=False, pad_token_id=pad)
    rows = []
    for batch, new_tokens in grid:
        prompts = exam_prompts(tokenizer, batch)
        queries, mask = pad_batch(prompts, pad, side="left")
        config = GenerationConfig(
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=0,
            top_p=1.0,
            pad_token_id=pad,
        )
        start = time.perf_counter()
        with torch.no_grad():
            out = policy.generate(input_ids=queries, attention_mask=mask, generation_config=config)
        generate_rate = (out.shape[1] - queries.shape[1]) * batch / (time.perf_counter() - start)
        engine.response_length = new_tokens
        start = time.perf_counter()
        sequences = engine.generate(prompts)
        vllm_rate = sum(len(s) for s in sequences) / (time.perf_counter() - start)
        if any(len(s) != new_tokens for s in sequences):
            print(f"  note: vLLM response lengths {sorted(len(s) for s in sequences)}", flush=True)
        rows.append(
            {
                "batch": batch,
                "new_tokens": new_tokens,
                "generate_tok_s": round(generate_rate, 1),
                "vllm_tok_s": round(vllm_rate, 1),
                "ratio": round(vllm_rate / generate_rate, 2),
            }
        )
        print(
            f"  {batch:>4} x {new_tokens:<4}  generate {generate_rate:7.1f} tok/s   vLLM {vllm_rate:7.1f} tok/s   "
            f"ratio {vllm_rate / generate_rate:4.2f}   (load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    # Free the engine (its KV cache) before the PPO part builds its own: both at once ran out of memory here.
    shutdown_engine(engine.llm)
    del engine
    gc.collect()
    return rows, {"engine_start_s": round(engine_start, 1), "first_push_s": round(push, 2)}


def two_label_verifier(model_dir, folder):
    """The model with a fresh 2-label head, saved as a sequence classifier: RL_stage2.py refuses a causal LM as the
    verifier (its scores would come from an untrained head without saying so); here only the time counts."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if not os.path.isfile(os.path.join(folder, "config.json")):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, dtype=torch.float32)
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(model_dir).save_pretrained(folder)
    return folder


def ppo_update_times(model_dir, batch, new_tokens, output_dir, kv_cache_gib):
    from huatuo_o1.rl import ppo_trainer
    from huatuo_o1.rl.config import check_batch_sizes, parse_args
    from huatuo_o1.rl.loading import Problem, load_models
    from huatuo_o1.rl.reward import build_reward
    from huatuo_o1.rl.vllm_rollout import engine_for_ppo

    verifier_dir = two_label_verifier(model_dir, os.path.join(output_dir, "verifier"))
    argv = [
        "--model_name_or_path",
        model_dir,
        "--reward_model_path",
        verifier_dir,
        "--dataset_name",
        "unused.json",
        "--output_dir",
        output_dir,
        "--response_length",
        str(new_tokens),
        "--temperature",
        str(TEMPERATURE),
        "--local_rollout_forward_batch_size",
        str(min(batch, 16)),
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        str(batch // 4),
        "--num_ppo_epochs",
        "1",
        "--total_episodes",
        str(2 * batch),
        "--learning_rate",
        "1e-6",
        "--bf16",
        "False",
        "--report_to",
        "none",
        "--gradient_checkpointing",
        "False",
        "--vllm_kv_cache_gib",
        str(kv_cache_gib),
    ]
    script_args, config, model_args = parse_args(argv)
    sizes = check_batch_sizes(config, world_size=1)
    models = load_models(model_args, config)
    reward = build_reward(config, script_args, models)
    items = [Problem("", "Vitamin C", ids) for ids in exam_prompts(models.tokenizer, batch)]
    trainer = ppo_trainer.PPOTrainer(
        config=config, sizes=sizes, models=models, reward=reward, train_items=items, eval_items=items[:1]
    )

    sampling = []  # seconds of each sampling call of the current rollout

    def timed(sample):
        def timed_sample(*args, **kwargs):
            start = time.perf_counter()
            out = sample(*args, **kwargs)
            sampling.append(time.perf_counter() - start)
            return out

        return timed_sample

    ppo_trainer.generate_responses = timed(ppo_trainer.generate_responses)
    results = {}
    for way in ("generate", "vllm"):
        if way == "vllm":
            trainer.rollout_engine = engine_for_ppo(config, trainer, [it.prompt_ids for it in items])
            trainer.rollout_engine.sync(trainer.accelerator.unwrap_model(trainer.model).policy, trainer.update)
            trainer.engine_responses = timed(trainer.engine_responses)
        sampling.clear()
        start = time.perf_counter()
        data = trainer.rollout(items)
        rollout = time.perf_counter() - start
        start = time.perf_counter()
        trainer.optimise(data)
        optimise = time.perf_counter() - start
        trainer.update += 1
        push = 0.0
        if way == "vllm":
            push = trainer.rollout_engine.sync(trainer.accelerator.unwrap_model(trainer.model).policy, trainer.update)
        tokens = int(data.targets.policy_mask.sum())
        results[way] = {
            "sampling_s": round(sum(sampling), 1),
            "scoring_s": round(rollout - sum(sampling), 1),
            "optimisation_s": round(optimise, 1),
            "weight_push_s": round(push, 2),
            "total_s": round(rollout + optimise + push, 1),
            "response_tokens": tokens,
        }
        print(
            f"  {way:<9} sampling {results[way]['sampling_s']:6.1f} s  scoring {results[way]['scoring_s']:6.1f} s  "
            f"optimisation {optimise:6.1f} s  push {push:5.2f} s  total {results[way]['total_s']:6.1f} s  "
            f"({tokens} response tokens; load {os.getloadavg()[0]:.1f})",
            flush=True,
        )
    return results


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--model", default=os.path.join(REPO, ".cache", "models", "SmolLM2-135M-Instruct"))
    parser.add_argument("--grid", default="16x128,64x256", help="batch x new tokens cells, comma-separated")
    parser.add_argument("--ppo", default="16x128", help="prompts x response length of the PPO update ('' to skip)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--kv_cache_gib", type=float, default=2.0, help="the engine's KV cache (1 GiB: ~23,000 tokens)"
    )
    parser.add_argument("--output_dir", default="/tmp/rollout_speed")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # before vLLM starts: its CPU worker then refuses changes
    torch.manual_seed(0)
    print(
        f"{args.model}; torch threads {args.threads}; load {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
        f"{os.getloadavg()[2]:.2f} (1/5/15 min)",
        flush=True,
    )
    grid = [tuple(int(x) for x in cell.split("x")) for cell in args.grid.split(",") if cell]
    summary = {"threads": args.threads, "load_before": os.getloadavg()[0]}
    if grid:
        print("sampling (every response exactly N new tokens):")
        summary["grid"], summary["engine"] = sampling_grid(args.model, grid, args.kv_cache_gib)
        engine = summary["engine"]
        print(f"  engine start {engine['engine_start_s']} s, first weight push {engine['first_push_s']} s")
    if args.ppo:
        batch, new_tokens = (int(x) for x in args.ppo.split("x"))
        print(f"one PPO update, {batch} prompts x up to {new_tokens} new tokens, one PPO epoch:")
        summary["ppo"] = ppo_update_times(args.model, batch, new_tokens, args.output_dir, args.kv_cache_gib)
    summary["load_after"] = os.getloadavg()[0]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
