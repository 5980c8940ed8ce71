"""Small verifiable-problem files for the RL tests."""

import json

PROBLEMS = [
    ("A 60-year-old smoker has painless hematuria. What is the most likely diagnosis?", "Bladder cancer"),
    ("Which drug is first line for hypertension in a patient with diabetes?", "ACE inhibitor"),
    ("A child has a barking cough and inspiratory stridor. What is the diagnosis?", "Croup"),
    ("What is the antidote for acetaminophen overdose?", "N-acetylcysteine"),
    (
        "A patient has chest pain and ST elevation in II, III and aVF. Which artery is blocked?",
        "Right coronary artery",
    ),
    ("Which vitamin deficiency causes scurvy?", "Vitamin C"),
    ("What organism causes most community-acquired pneumonia?", "Streptococcus pneumoniae"),
    ("Which electrolyte disturbance gives peaked T waves?", "Hyperkalemia"),
    ("What is the first line treatment of anaphylaxis?", "Intramuscular epinephrine"),
    ("Which hormone is low in primary hypothyroidism?", "Thyroxine"),
]


def flags(**values):
    """["--name", "value", ...] from keyword arguments; None leaves the flag out."""
    return [item for name, value in values.items() if value is not None for item in (f"--{name}", str(value))]


def rl_flags(tiny_models, data, out, **overrides):
    """RL_stage2.py's flags for the tiny models, small sizes; overrides change or (None) drop a flag."""
    values = dict(
        model_name_or_path=tiny_models["tiny-qwen2"], reward_model_path=tiny_models["tiny-verifier"],
        value_model_path=tiny_models["tiny-value"], dataset_name=data, output_dir=out, response_length=10,
        temperature=1.0, local_rollout_forward_batch_size=3, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, bf16=False, learning_rate=3e-3, report_to="none", logging_steps=1, seed=1,
    )  # fmt: skip
    values.update(overrides)
    return flags(**values)


def write_problems(path, n=10, extra_rows=()):
    rows = [{"Open-ended Verifiable Question": q, "Ground-True Answer": a} for q, a in (PROBLEMS * 3)[:n]]
    rows.extend(extra_rows)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(rows, f)
    return str(path)


def teach_answer_layout(model_dir, out_dir, steps=60, lr=3e-3, seed=0):
    """A copy of a tiny chat model trained briefly to answer as "## Thinking ... ## Final Response ...".

    A random tiny policy never writes the layout, so every reward would be 0.0 and group-relative
    methods (GRPO, RLOO) would see no signal; after this it writes the layout some of the time.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    texts = []
    for question, answer in PROBLEMS:
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        texts.append(
            prompt
            + f"## Thinking\n\nLet me reason step by step.\n\n## Final Response\n\n{answer}"
            + tokenizer.eos_token
        )
    batch = tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir), loss.item()


def build_ppo_trainer(argv, problems=PROBLEMS):
    """RL_stage2.py's PPO trainer for these flags, built here from the package, ready for rollout() / optimise()."""
    from huatuo_o1.rl.config import check_batch_sizes, parse_args
    from huatuo_o1.rl.loading import Problem, load_models, prompt_ids
    from huatuo_o1.rl.ppo_trainer import PPOTrainer
    from huatuo_o1.rl.reward import build_reward

    script_args, config, model_args = parse_args(argv)
    sizes = check_batch_sizes(config, world_size=1)
    models = load_models(model_args, config)
    reward = build_reward(config, script_args, models)
    items = [Problem(q, a, prompt_ids(models.tokenizer, q)) for q, a in problems]
    return PPOTrainer(
        config=config, sizes=sizes, models=models, reward=reward, train_items=items, eval_items=items[:1]
    )
