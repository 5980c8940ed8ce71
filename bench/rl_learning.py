"""Does RL learn? PPO (ours), GRPO and RLOO (trl) through RL_stage2.py, from a partly competent policy, on CPU.

    python bench/rl_learning.py            # prepare (cached), 3 algorithms x 2 seeds, figure and JSON

1. prepare (cached under --cache_dir, keyed by its inputs; a second run reuses it):
   SmolLM2-135M-Instruct after a short SFT (SFT_stage1.py) on the 44 demo exam items that carry a
   verifiable question, each answered in one short line ("The answer is X."), so that sampling it
   answers some problems right and not all; a verifier (train_verifier.py --exam_items, from the base)
   on the pairs the items' options give (the right option and each wrong one, worded as the SFT policy
   answers or bare, in turn); PPO's value model, the base's first --value_layers blocks. (A verifier on the base's
   first 8 blocks, lr 1e-4, 1 epoch, learned nothing: held-out accuracy 0.33.) The SFT and the
   verifier train side by side, one thread each. RL trains on the problems where the share of the SFT
   policy's sampled answers (--selection_samples, as RL samples) that name the reference lies in
   [--min_pass, --max_pass] (the others give every response of a group the same reward), each fact once
   (the demo data asks most facts twice: the vignette nearer half right is kept, so RL never holds out the
   other vignette of a problem it trains on). (The policy's
   teacher-forced probability of the right option among the item's options is no guide: 0.9 or more on
   37 of 44 items, while its samples named the reference on few of them.) The SFT policy's pass rates on
   the chosen problems are then measured again with fresh samples (--check_samples per problem): the
   selection's own rates are biased by the choice.
2. RL: for each algorithm and seed, RL_stage2.py in its own process (its own peak RSS), --parallel of
   them side by side with --threads threads each; every algorithm samples --batch responses per update
   (PPO: --batch prompts; GRPO / RLOO: --batch / --num_generations prompts x --num_generations).
   Each reward call is logged (mean reward, format rate, share of answers naming the reference), so
   the curves of the three algorithms are read the same way; KL from each algorithm's own log.
   After RL each run samples its trained policy's answers as the check sampled the SFT policy's (same
   seed, so the same random numbers): the pass rate before -> after, on the problems the run trained on
   and on its held-out ones, is the low-noise measure of what RL changed.
3. Report: first-fifth / last-fifth training reward per algorithm and seed, the sampled pass rate
   before -> after, seconds per update, peak RSS; rl_learning.png (reward mean and min..max band over
   seeds, string match, KL) and rl_learning.json in --output_dir. A run finished before with the same
   settings (its run.json) is reused, so an interrupted bench goes on where it stopped.

The problems RL trains on are problems the SFT saw: a 135M model knows no medicine, so RL can only make
the answers it already gives sometimes more likely. The bench shows the learning mechanism, not medical
skill, and says nothing about the paper's scale (docs/rl.md).
"""

import argparse
import json
import os
import resource
import runpy
import shutil
import subprocess
import sys
import time

from huatuo_o1 import cli
from huatuo_o1.records import GROUND_TRUTH, OPEN_QUESTION, SFT_FIELDS, digest, read_json, write_json_atomic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REWARD_LOG = "reward_calls.jsonl"
RUN_RECORD = "run.json"  # a finished run's settings and wall time: a later bench with the same settings reuses it
ALGORITHM_COLOURS = {"ppo": "tab:blue", "grpo": "tab:orange", "rloo": "tab:green"}
DAPO_FLAGS = ("loss_agg", "cliprange_high", "overlong_penalty_len", "dynamic_sampling")  # RL_stage2.py's, passed on


def load_note():
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} (5 min {five:.1f})"


# ---- prepare --------------------------------------------------------------------------------------
PREPARE_SETTINGS = ("sft_epochs", "sft_learning_rate", "verifier_epochs", "verifier_learning_rate", "value_layers")
SELECTION_SETTINGS = ("temperature", "response_length", "selection_samples", "min_pass", "max_pass")
CHECK_SEED = 1234  # the before/after check's samples: the same random numbers for the SFT policy and every RL run


def demo_items():
    """The demo exam items that carry a verifiable question (the others are the ambiguous NOT / EXCEPT ones)."""
    items = read_json(os.path.join(REPO_ROOT, "data", "demo_data.json"))
    return [it for it in items if it.get(OPEN_QUESTION) and it.get(GROUND_TRUTH)]


def one_vignette_per_fact(items, rates, chosen):
    """The chosen indices, each fact (reference answer) once: the vignette whose pass rate lies nearest 0.5, the
    earlier on a tie. data/demo_data.json asks most facts twice; kept once, no problem RL holds out is the other
    vignette of one it trains on."""
    best = {}
    for i in chosen:
        fact = items[i][GROUND_TRUTH]
        if fact not in best or abs(rates[i] - 0.5) < abs(rates[best[fact]] - 0.5):
            best[fact] = i
    return sorted(best.values())


def as_problem(item):
    """The verifiable problem of an exam item: its two fields, as RL_stage2.py reads them."""
    return {OPEN_QUESTION: item[OPEN_QUESTION], GROUND_TRUTH: item[GROUND_TRUTH]}


def short_answer(option):
    """Thinking and final response of the SFT rows, and the phrasing the verifier pairs read."""
    return f"The findings fit {option} best.", f"The answer is {option}."


def answer_phrasings():
    """How the verifier's exam pairs are worded: as the SFT policy answers, and bare (--exam_answer_phrasings)."""
    return short_answer("{option}")[1] + "\n{option}\n"


def run_logged(command, log_path, threads):
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(threads),
        TOKENIZERS_PARALLELISM="false",
        WANDB_MODE="disabled",
        TQDM_DISABLE="1",
    )
    log = open(log_path, "w")
    return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env), log


def wait_logged(process, log, what):
    """Wait for a process run_logged started; stop the bench, naming its log, if it failed."""
    process.wait()
    log.close()
    if process.returncode:
        raise SystemExit(f"{what} failed (exit {process.returncode}); see {log.name}")


def prepare(args):
    """The prepared policy, verifier, value model and RL problems: from the cache, or made now (and cached).

    The models are cached by their settings, the choice of RL problems by its own (a new --min_pass trains nothing)."""
    from huatuo_o1.rl.pass_rates import sampled_pass_rates

    base = (
        args.base_model
        or subprocess.run(
            [sys.executable, os.path.join(REPO_ROOT, "tools", "get_smollm2.py")],
            check=True,
            capture_output=True,
            text=True,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    items = demo_items()
    folder = os.path.join(args.cache_dir, digest({
        "settings": {k: getattr(args, k) for k in PREPARE_SETTINGS}, "items": items, "version": 3,
        "base": base_identity(base)}))  # fmt: skip
    made_models = args.fresh or not os.path.exists(os.path.join(folder, "prepared.json"))
    if made_models:
        prepare_models(args, base, items, folder)
    prepared = read_json(os.path.join(folder, "prepared.json"))
    settings = {k: getattr(args, k) for k in SELECTION_SETTINGS}
    selection_key = digest([settings, "one vignette per fact"])  # the rule is part of the cached choice
    selection_path = os.path.join(folder, f"selection_{selection_key}.json")
    made_selection = made_models or not os.path.exists(selection_path)
    if made_selection:
        start = time.time()
        rates = sampled_pass_rates(prepared["policy"], items, args.selection_samples, args.temperature,
                                   args.response_length, seed=0)  # fmt: skip
        in_range = [i for i, r in enumerate(rates) if args.min_pass <= r <= args.max_pass]
        chosen = one_vignette_per_fact(items, rates, in_range)
        rows_path = os.path.join(folder, f"rl_problems_{selection_key}.json")
        write_json_atomic(rows_path, [as_problem(items[i]) for i in chosen])
        write_json_atomic(selection_path, {"settings": settings, "rl_problems": rows_path, "pass_rates": rates,
                                    "chosen": chosen, "seconds": round(time.time() - start, 1)})  # fmt: skip
    selection = read_json(selection_path)
    # The SFT policy's pass rates on the RL problems measured again, with fresh samples: the selection's own rates
    # are biased by the choice (kept for lying in the range), and RL runs are checked against these.
    check = {"samples": args.check_samples, "temperature": args.temperature,
             "response_length": args.response_length, "seed": CHECK_SEED}  # fmt: skip
    check_path = os.path.join(folder, f"check_{digest([selection_key, check])}.json")
    made_check = made_selection or not os.path.exists(check_path)
    if made_check:
        start = time.time()
        rates = sampled_pass_rates(prepared["policy"], read_json(selection["rl_problems"]), **check)
        write_json_atomic(check_path, {"check": check, "rates": rates, "seconds": round(time.time() - start, 1)})
    measured = read_json(check_path)
    prepared.update(
        rl_problems=selection["rl_problems"],
        rl_problem_pass_rates=[selection["pass_rates"][i] for i in selection["chosen"]],
        pass_rates_all=selection["pass_rates"], selection_seconds=selection["seconds"],
        check=check, sft_check_rates=measured["rates"], check_seconds=measured["seconds"],
        made_now=[name for name, made in (("models", made_models), ("choice of problems", made_selection),
                                          ("check", made_check)) if made],
    )  # fmt: skip
    prepared["cached"] = not prepared["made_now"]
    return prepared


def base_identity(base):
    """The base model as the cache sees it: its config, less the transformers version that saved it."""
    config = read_json(os.path.join(base, "config.json"))
    config.pop("transformers_version", None)
    return config


def prepare_models(args, base, items, folder):
    """SFT policy, verifier and value model into `folder`, summed up in its prepared.json."""
    from huatuo_o1.rl.value_model import truncated_value_model

    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    start, py = time.time(), sys.executable
    paths = {name: os.path.join(folder, f"{name}.json") for name in ("problems", "sft_data", "exam_items")}
    write_json_atomic(paths["problems"], [as_problem(it) for it in items])
    sft_rows = [dict(zip(SFT_FIELDS, (it[OPEN_QUESTION], *short_answer(it[GROUND_TRUTH]))))
                for it in items]  # fmt: skip
    write_json_atomic(paths["sft_data"], sft_rows)
    write_json_atomic(paths["exam_items"], items)
    phrasings_path = os.path.join(folder, "answer_phrasings.txt")
    with open(phrasings_path, "w") as f:
        f.write(answer_phrasings())
    value_dir = os.path.join(folder, "value")
    truncated_value_model(base, args.value_layers, value_dir)

    # The SFT and the verifier train side by side, one thread each.
    sft = run_logged([py, "SFT_stage1.py", "--model_path", base, "--data_path", paths["sft_data"],
                      "--output_dir", os.path.join(folder, "sft"), "--experiment_name", "sft",
                      "--log_dir", os.path.join(folder, "sft_logs"), "--n_epochs", str(args.sft_epochs),
                      "--train_bsz_per_gpu", "4", "--gradient_accumulation_steps", "1",
                      "--learning_rate", args.sft_learning_rate, "--max_seq_len", "512", "--report_to", "none",
                      "--gradient_checkpointing", "False", "--save_training_state", "False", "--seed", "0"],
                     os.path.join(folder, "sft.log"), 1)  # fmt: skip
    verifier_dir = os.path.join(folder, "verifier")
    verifier = run_logged([py, "train_verifier.py", "--model_path", base, "--eval_before_training", "False",
                           "--exam_items", paths["exam_items"],
                           "--exam_answer_phrasings", phrasings_path, "--output_dir", verifier_dir,
                           "--max_length", "256",
                           "--learning_rate", args.verifier_learning_rate,
                           "--head_learning_rate", "1e-3", "--n_epochs", str(args.verifier_epochs),
                           "--train_bsz_per_gpu", "8", "--save_epoch_state", "False", "--report_to", "none",
                           "--eval_fraction", "0.15", "--seed", "0"],
                          os.path.join(folder, "verifier.log"), 1)  # fmt: skip
    wait_logged(*sft, "SFT")
    wait_logged(*verifier, "verifier training")
    sft_summary = read_json(os.path.join(folder, "sft", "sft", "training_summary.json"))
    verifier_summary = read_json(os.path.join(verifier_dir, "verifier_summary.json"))

    prepared = {
        "base": base, "policy": sft_summary["final_checkpoint"], "verifier": verifier_dir, "value": value_dir, **paths,
        "sft": {k: sft_summary.get(k) for k in ("examples", "optimizer_steps", "first_loss", "last_loss")},
        "verifier_heldout": verifier_summary.get("heldout"), "verifier_string_match": verifier_summary.get("baseline"),
        "seconds": round(time.time() - start, 1), "load_after": load_note(),
    }  # fmt: skip
    write_json_atomic(os.path.join(folder, "prepared.json"), prepared)


def reward_call_record(reward, responses, references, result):
    """One reward call as the bench logs it: the mean reward, the format rate, the share of answers naming the
    reference (string match) and how often the verifier's verdict agrees with it on well-formed answers."""
    from huatuo_o1.answer_format import final_answer
    from huatuo_o1.verifier_training import string_match

    answers = [final_answer(r) for r in responses]
    matched = [a is not None and string_match(a, ref) for a, ref in zip(answers, references)]
    says = (result.p_correct > reward.values.threshold).tolist()
    formed = result.well_formed.tolist()
    agree = [s == m for s, m, w in zip(says, matched, formed) if w]
    return {
        "time": time.time(), "n": len(responses), "reward": result.rewards.float().mean().item(),
        "format_rate": sum(formed) / len(formed), "string_match": sum(matched) / len(matched),
        "verifier_agrees": sum(agree) / max(1, len(agree)), "example": responses[0][:200],
        "references": list(references), "rewards_right_wrong": [reward.values.correct, reward.values.incorrect],
    }  # fmt: skip


# ---- one RL run (in a child process) -------------------------------------------------------------
def child(out, argv, threads, check):
    """RL_stage2.py run whole in this process, every reward call logged; then the trained policy's sampled pass rates
    on the RL problems (`check`: as the SFT policy's were measured) and this process's peak RSS."""
    import torch

    torch.set_num_threads(threads)
    from huatuo_o1.rl.pass_rates import sampled_pass_rates
    from huatuo_o1.verifier import VerifierReward

    def log_call(reward, responses, references, result):
        with open(os.path.join(out, REWARD_LOG), "a") as f:
            f.write(json.dumps(reward_call_record(reward, responses, references, result)) + "\n")

    sys.argv = ["RL_stage2.py", *argv]
    try:
        with VerifierReward.observe_calls(log_call):
            runpy.run_path(os.path.join(REPO_ROOT, "RL_stage2.py"), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code not in (None, 0):
            raise
    summary = read_json(os.path.join(out, "rl_summary.json"))
    if check:  # (a --prepared file from elsewhere has no before to compare with)
        start = time.time()
        summary["check_rates"] = sampled_pass_rates(out, read_json(check.pop("rl_problems")), **check)
        summary["check_seconds"] = round(time.time() - start, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    summary["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
    # one thread: on an otherwise idle core the run's wall time would be about its CPU time
    summary["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 1)
    write_json_atomic(os.path.join(out, "child_summary.json"), summary)


def rl_argv(args, prepared, algorithm, seed, out):
    per_device = min(args.micro_batch, args.batch)
    argv = [
        "--model_name_or_path", prepared["policy"], "--reward_model_path", prepared["verifier"],
        "--value_model_path", prepared["value"], "--dataset_name", prepared["rl_problems"], "--output_dir", out,
        "--rl_algorithm", algorithm, "--seed", str(seed), "--response_length", str(args.response_length),
        "--temperature", str(args.temperature), "--local_rollout_forward_batch_size", str(args.batch),
        "--per_device_train_batch_size", str(per_device),
        "--gradient_accumulation_steps", str(args.batch // per_device),
        "--num_mini_batches", "1", "--total_episodes", str(args.batch * args.updates), "--num_ppo_epochs", "1",
        "--learning_rate", str(args.learning_rate), "--kl_coef", str(args.kl_coef), "--lam", str(args.lam),
        "--num_generations", str(args.num_generations), "--eval_fraction", str(args.eval_fraction),
        "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--bf16", "False",
        "--gradient_checkpointing", "False",
        "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none", "--logging_steps", "1",
    ]  # fmt: skip
    for flag in DAPO_FLAGS:  # passed on only when given, so a run without them is the one cached before
        value = getattr(args, flag)
        if value not in (None, False):
            argv += [f"--{flag}", str(value)]
    return argv


def sft_pass_rates_by_answer(prepared):
    """Reference answer -> the SFT policy's check pass rate on its problem (the mean if problems share an answer)."""
    rates = {}
    for row, rate in zip(read_json(prepared["rl_problems"]), prepared.get("sft_check_rates") or []):
        rates.setdefault(row[GROUND_TRUTH], []).append(rate)
    return {answer: sum(r) / len(r) for answer, r in rates.items()}


def collect(out, algorithm, sft_rates):
    """Per-update records: the reward calls between the first and the last (those two score the held-out problems,
    greedy, before and after), with the KL from the algorithm's own log. Each update's reward is also set against
    the reward the SFT policy would expect on the same problems (its check pass rates, `sft_rates`): GRPO and RLOO
    draw 4 problems an update, and which 4 moves the raw reward more than RL does in 10 updates."""
    summary = read_json(os.path.join(out, "child_summary.json"))
    calls = read_json(os.path.join(out, REWARD_LOG))
    dropped = []
    if algorithm == "ppo":
        kls = [
            r["objective/kl"] / max(r["val/response_length"], 1) for r in read_json(os.path.join(out, "rl_log.jsonl"))
        ]
    else:
        trl_log = read_json(os.path.join(out, "rl_trl_log.json"))
        kls = [r.get("kl") for r in trl_log]
        if trl_log and "dynamic_sampling/rounds" in trl_log[0]:  # --dynamic_sampling: one reward call per round
            calls = (
                calls[:1]
                + merge_rounds(calls[1:-1], [int(r["dynamic_sampling/rounds"]) for r in trl_log])
                + calls[-1:]
            )
            dropped = [r["dynamic_sampling/dropped_share"] for r in trl_log]
    records = []
    for i, call in enumerate(calls[1:-1]):
        records.append({
            "update": i + 1, "reward": call["reward"], "format_rate": call["format_rate"],
            "string_match": call["string_match"], "verifier_agrees": call["verifier_agrees"],
            "kl_per_token": kls[i] if i < len(kls) else None, "seconds": round(call["time"] - calls[i]["time"], 1),
        })  # fmt: skip
        if i < len(dropped):
            records[-1]["groups_dropped_share"] = dropped[i]
        references = call.get("references")  # (not logged by runs made before it was)
        if references and all(r in sft_rates for r in references):
            right, wrong = call["rewards_right_wrong"]
            expected = sum(wrong + (right - wrong) * sft_rates[r] for r in references) / len(references)
            records[-1].update(sft_expected_reward=round(expected, 4), reward_above_sft=call["reward"] - expected)
    return {"records": records, "summary": summary, "examples": [c["example"] for c in calls[-3:-1]]}


def merge_rounds(calls, rounds):
    """Reward calls of a --dynamic_sampling run, one per sampling round, merged into one per update (rounds: how
    many each update sampled): means weighted by answers, the references of every round, the last round's time."""
    merged, start = [], 0
    for count in rounds:
        chunk, start = calls[start : start + count], start + count
        answers = sum(c["n"] for c in chunk)
        merged.append(dict(chunk[-1], n=answers, references=[r for c in chunk for r in c.get("references", [])],
                           **{key: sum(c[key] * c["n"] for c in chunk) / answers
                              for key in ("reward", "format_rate", "string_match", "verifier_agrees")}))  # fmt: skip
    return merged


def run_all(args, prepared, on_finish):
    """Every (algorithm, seed) as a child process, --parallel at a time; returns {run name: collected}.
    on_finish(results so far) after each run."""
    jobs = [(a, s) for a in args.algorithms for s in args.seeds]
    results, running = {}, []
    sft_rates = sft_pass_rates_by_answer(prepared)

    def add(algorithm, seed, out, record):
        run = collect(out, algorithm, sft_rates)
        run["summary"].update({k: v for k, v in record.items() if k != "task"})
        results[f"{algorithm}_seed{seed}"] = run
        report_run(algorithm, seed, run)
        on_finish(results)

    def finish(job):
        (process, log), (algorithm, seed), out, task, started, load_before = job
        wait_logged(process, log, f"{algorithm} seed {seed}")
        record = {"task": task, "wall_seconds": round(time.time() - started, 1), "load_at_start": load_before,
                  "load_at_end": load_note()}  # fmt: skip
        write_json_atomic(os.path.join(out, RUN_RECORD), record)
        add(algorithm, seed, out, record)

    for algorithm, seed in jobs:
        out = os.path.join(args.output_dir, "runs", f"{algorithm}_seed{seed}")
        argv = rl_argv(args, prepared, algorithm, seed, out)
        check = dict(prepared["check"], rl_problems=prepared["rl_problems"]) if "check" in prepared else None
        task = {"argv": argv, "check": check, "threads": args.threads}
        done = os.path.join(out, RUN_RECORD)
        if not args.fresh and os.path.exists(done) and read_json(done)["task"] == task:
            print(f"{algorithm} seed {seed}: finished before with the same settings, reused ({out})", flush=True)
            add(algorithm, seed, out, read_json(done))
            continue
        if len(running) == args.parallel:
            finish(running.pop(0))
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        command = [sys.executable, os.path.abspath(__file__), "--child_out", out, "--child_argv", json.dumps(argv),
                   "--child_check", json.dumps(check), "--threads", str(args.threads)]  # fmt: skip
        print(f"{algorithm} seed {seed}: started ({load_note()})", flush=True)
        process = run_logged(command, os.path.join(out, "stdout.log"), args.threads)
        running.append((process, (algorithm, seed), out, task, time.time(), load_note()))
    for job in running:
        finish(job)
    return results


def fifths(values):
    n = max(1, len(values) // 5)
    return sum(values[:n]) / n, sum(values[-n:]) / n


def report_run(algorithm, seed, run):
    rewards, s = [r["reward"] for r in run["records"]], run["summary"]
    first, last = fifths(rewards)
    per_update = s["seconds"] / max(1, len(rewards))
    print(f"  {algorithm} seed {seed}: reward first fifth {first:.3f} -> last fifth {last:.3f} ({last - first:+.3f}); "
          f"{len(rewards)} updates, {per_update:.1f} s/update, {s['wall_seconds']:.0f} s wall "
          f"({s['cpu_seconds']:.0f} s CPU), peak RSS "
          f"{s['peak_rss_mb']} MB; held-out {s['eval_start']['mean_reward']:.2f} -> "
          f"{s['eval_end']['mean_reward']:.2f} "
          f"({s['eval_problems']} problems, greedy); {s['load_at_end']}", flush=True)  # fmt: skip
    if "dynamic_sampling" in s:
        print(
            f"    dynamic sampling: {s['dynamic_sampling']['dropped_share']:.2f} of the groups drawn dropped, "
            f"{s['dynamic_sampling']['rounds'] / max(1, len(rewards)):.1f} sampling rounds per update",
            flush=True,
        )


# ---- report ---------------------------------------------------------------------------------------
def pass_rate_check(prepared, run, seed, eval_fraction):
    """Mean sampled pass rate (prepared["check"]) of the SFT policy and of the run's trained policy, on the problems
    the run trained on and on its held-out ones (RL_stage2.py's split for that seed); {} when not measured."""
    from huatuo_o1.rl.config import ScriptArguments
    from huatuo_o1.rl.loading import load_problems

    before, after = prepared.get("sft_check_rates"), run["summary"].get("check_rates")
    if before is None or after is None:
        return {}
    split_as_rl = ScriptArguments(dataset_name=prepared["rl_problems"], eval_fraction=eval_fraction)
    trained_on = {p.question for p in load_problems(split_as_rl, seed)[0]}
    rows = read_json(prepared["rl_problems"])
    figures = {}
    for part, keep in (("train", True), ("heldout", False)):
        picked = [i for i, row in enumerate(rows) if (row[OPEN_QUESTION] in trained_on) == keep]
        for when, rates in (("before", before), ("after", after)):
            figures[f"pass_{part}_{when}"] = round(sum(rates[i] for i in picked) / max(1, len(picked)), 3)
    return figures


def table(args, prepared, results):
    rows = []
    for name, run in results.items():
        records, s = run["records"], run["summary"]
        seed = int(name.split("_seed")[1])
        first, last = fifths([r["reward"] for r in records])
        match_first, match_last = fifths([r["string_match"] for r in records])
        rows.append({
            "run": name, "updates": len(records), "reward_first_fifth": round(first, 3),
            "reward_last_fifth": round(last, 3), "gain": round(last - first, 3),
            "string_match_first_fifth": round(match_first, 3), "string_match_last_fifth": round(match_last, 3),
            "verifier_agrees": round(sum(r["verifier_agrees"] for r in records) / max(1, len(records)), 3),
            "kl_per_token_last": records[-1]["kl_per_token"] if records else None,
            "seconds_per_update": round(s["seconds"] / max(1, len(records)), 1), "wall_seconds": s["wall_seconds"],
            "cpu_seconds": s["cpu_seconds"],
            "peak_rss_mb": s["peak_rss_mb"], "heldout_before": s["eval_start"]["mean_reward"],
            "heldout_after": s["eval_end"]["mean_reward"], "load_at_end": s["load_at_end"],
            **pass_rate_check(prepared, run, seed, args.eval_fraction),
        })  # fmt: skip
        if "dynamic_sampling" in s:
            rows[-1]["groups_dropped_share"] = s["dynamic_sampling"]["dropped_share"]
        if records and all("reward_above_sft" in r for r in records):
            first, last = fifths([r["reward_above_sft"] for r in records])
            rows[-1].update(above_sft_first_fifth=round(first, 3), above_sft_last_fifth=round(last, 3),
                            above_sft_gain=round(last - first, 3))  # fmt: skip
    return rows


def plot(args, results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grouped = {}
    for name, run in results.items():
        grouped.setdefault(name.split("_seed")[0], []).append(run)
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.2))
    panels = [("reward", "mean verifier reward, sampled training answers"),
              ("reward_above_sft", "the same minus the SFT policy's expected reward\non the same problems"),
              ("string_match", "share of sampled answers naming the reference"),
              ("kl_per_token", "KL to the reference per token (PPO k1, trl k3)")]  # fmt: skip
    for algorithm, runs in grouped.items():
        n = min(len(run["records"]) for run in runs)
        x = np.arange(1, n + 1)
        for ax, (key, _) in zip(axes, panels):
            values = np.array([[np.nan if r.get(key) is None else r[key] for r in run["records"][:n]] for run in runs])
            colour = ALGORITHM_COLOURS.get(algorithm)
            ax.plot(x, np.nanmean(values, axis=0), color=colour, label=f"{algorithm} (mean of {len(runs)} seeds)")
            ax.fill_between(x, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=colour, alpha=0.2)
    for ax, (key, title) in zip(axes, panels):
        limits = {"kl_per_token": {}, "reward_above_sft": {"ylim": (-0.6, 0.6)}}.get(key, {"ylim": (-0.05, 1.05)})
        ax.set(title=title, xlabel="update", **limits)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"RL from a partly competent SmolLM2-135M (CPU): {args.batch} sampled responses per update, "
                 f"lr {args.learning_rate}; band = min..max over seeds", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--output_dir", default=os.path.join(REPO_ROOT, "bench_out", "rl_learning"))
    parser.add_argument("--cache_dir", default=os.path.join(REPO_ROOT, ".cache", "rl_learning"))
    parser.add_argument("--fresh", action="store_true",
                        help="prepare again even when the cache has it, and run every RL run again")  # fmt: skip
    parser.add_argument("--prepared", help="a prepared.json (policy, verifier, value, rl_problems) to use instead")
    parser.add_argument("--base_model", help="default: SmolLM2-135M-Instruct (tools/get_smollm2.py)")
    parser.add_argument("--prepare_only", action="store_true", help="prepare (or find in the cache) and stop")
    prep = parser.add_argument_group("prepare")
    prep.add_argument("--sft_epochs", type=int, default=2)
    prep.add_argument("--sft_learning_rate", default="2e-4")
    prep.add_argument("--verifier_epochs", type=int, default=1)
    prep.add_argument("--verifier_learning_rate", default="5e-5")
    prep.add_argument("--value_layers", type=int, default=6, help="PPO's value model: the base's first N blocks")
    prep.add_argument("--selection_samples", type=int, default=8, help="answers sampled per item (RL problem choice)")
    prep.add_argument("--min_pass", type=float, default=0.125, help="RL problems: share of right answers at least")
    prep.add_argument("--max_pass", type=float, default=0.875, help="... and at most")
    prep.add_argument("--check_samples", type=int, default=8,
                      help="answers sampled per RL problem to measure pass rates before and after RL")  # fmt: skip
    rl = parser.add_argument_group("RL")
    rl.add_argument("--algorithms", nargs="+", default=["ppo", "grpo", "rloo"])
    rl.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    rl.add_argument("--updates", type=int, default=10)
    rl.add_argument(
        "--batch",
        type=int,
        default=16,
        help="sampled responses per update, every algorithm (32: fifths agree with the check; 2x time)",
    )
    rl.add_argument("--micro_batch", type=int, default=8)
    rl.add_argument("--response_length", type=int, default=48)
    rl.add_argument("--temperature", type=float, default=0.7)
    rl.add_argument("--learning_rate", type=float, default=2e-5)
    rl.add_argument("--kl_coef", type=float, default=0.03, help="PPO's kl_coef, GRPO / RLOO's beta")
    # With lam < 1 GAE credits each token partly with the value model's estimates of the states after it; the
    # value model's head is new and 10 updates hardly train it, so 0.95 (the original's) learned nothing here
    # (docs/rl.md). With 1.0 the advantage is the return minus the value: an untrained baseline adds noise only.
    rl.add_argument("--lam", type=float, default=1.0, help="PPO's GAE lambda")
    rl.add_argument("--num_generations", type=int, default=4)
    rl.add_argument("--eval_fraction", type=float, default=0.2)
    rl.add_argument("--parallel", type=int, default=2, help="RL runs side by side")
    rl.add_argument("--threads", type=int, default=1, help="torch threads per run")
    dapo = parser.add_argument_group(
        "DAPO's knobs, passed on to RL_stage2.py (see its --help); use another "
        "--output_dir than the plain runs': a run's folder is named by algorithm and seed"
    )
    dapo.add_argument("--loss_agg", help="checked by RL_stage2.py")
    dapo.add_argument("--cliprange_high", type=float)
    dapo.add_argument("--overlong_penalty_len", type=int)
    dapo.add_argument("--dynamic_sampling", action="store_true", help="GRPO, RLOO")
    parser.add_argument("--child_out", help=argparse.SUPPRESS)
    parser.add_argument("--child_argv", help=argparse.SUPPRESS)
    parser.add_argument("--child_check", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_out:
        return child(args.child_out, json.loads(args.child_argv), args.threads, json.loads(args.child_check))

    started = time.time()
    print(f"bench/rl_learning.py: {load_note()}, {os.cpu_count()} CPUs", flush=True)
    prepared = dict(read_json(args.prepared), cached=True) if args.prepared else prepare(args)
    print(f"prepared ({describe(prepared)}); SFT loss "
          f"{prepared['sft']['first_loss']:.2f} -> {prepared['sft']['last_loss']:.2f}; verifier held-out "
          f"accuracy {prepared['verifier_heldout']['accuracy']:.2f}", flush=True)  # fmt: skip
    if args.prepare_only:
        return
    os.makedirs(args.output_dir, exist_ok=True)
    results = run_all(args, prepared, lambda done: write_report(args, prepared, done, started, final=False))
    write_report(args, prepared, results, started, final=True)


def describe(prepared):
    """How the preparation came about and what it chose; a --prepared file from elsewhere may not say."""
    rates = prepared.get("rl_problem_pass_rates")
    if rates is None:  # e.g. the prototype's prepared.json: its RL problems, no record of their choice
        return f"given; {len(read_json(prepared['rl_problems']))} RL problems"
    how = "made now: " + ", ".join(prepared["made_now"]) if prepared["made_now"] else "from the cache"
    spread = f"{min(rates, default=0):.2f}..{max(rates, default=0):.2f}, mean {sum(rates) / max(1, len(rates)):.2f}"
    check = prepared["sft_check_rates"]
    return (f"{how}; models {prepared['seconds']:.0f} s, choice {prepared['selection_seconds']:.0f} s, check "
            f"{prepared['check_seconds']:.0f} s): {len(rates)} RL problems of {len(prepared['pass_rates_all'])} "
            f"(sampled pass rate of the SFT policy {spread}; measured again with fresh samples, mean "
            f"{sum(check) / max(1, len(check)):.2f}")  # fmt: skip


def write_report(args, prepared, results, started, final):
    """rl_learning.json and rl_learning.png from the runs finished so far; the table when all are."""
    rows = table(args, prepared, results)
    peak = {}
    for row in rows:
        algorithm = row["run"].split("_seed")[0]
        peak[algorithm] = max(peak.get(algorithm, 0), row["peak_rss_mb"])
    total = round(time.time() - started, 1)
    settings = {k: v for k, v in vars(args).items() if not k.startswith("child_")}
    write_json_atomic(os.path.join(args.output_dir, "rl_learning.json"),
               {"settings": settings, "prepared": prepared, "table": rows, "peak_rss_mb": peak,
                "seconds_total": total, "complete": final, "runs": results})  # fmt: skip
    plot(args, results, os.path.join(args.output_dir, "rl_learning.png"))
    if not final:
        return
    print("\nrun | reward first fifth -> last fifth (gain) | the same above the SFT policy's expected reward on the "
          "same problems | string match | s/update | peak RSS MB | held-out | sampled pass rate before -> after RL: "
          "train problems, held-out problems")  # fmt: skip
    for r in rows:
        above = ("n/a" if "above_sft_gain" not in r else
                 f"{r['above_sft_first_fifth']:+.3f} -> {r['above_sft_last_fifth']:+.3f} "
                 f"({r['above_sft_gain']:+.3f})")  # fmt: skip
        check = ("n/a" if "pass_train_before" not in r else
                 f"{r['pass_train_before']:.2f} -> {r['pass_train_after']:.2f} "
                 f"({r['pass_train_after'] - r['pass_train_before']:+.2f}), "
                 f"{r['pass_heldout_before']:.2f} -> {r['pass_heldout_after']:.2f}")  # fmt: skip
        print(f"{r['run']} | {r['reward_first_fifth']:.3f} -> {r['reward_last_fifth']:.3f} ({r['gain']:+.3f}) | "
              f"{above} | "
              f"{r['string_match_first_fifth']:.2f} -> {r['string_match_last_fifth']:.2f} | "
              f"{r['seconds_per_update']} | "
              f"{r['peak_rss_mb']} | {r['heldout_before']:.2f} -> {r['heldout_after']:.2f} | {check}")  # fmt: skip
    print("peak RSS per algorithm (MB): " + ", ".join(f"{a} {m}" for a, m in peak.items()))
    print(
        f"total {total:.0f} s ({'preparation cached' if prepared['cached'] else 'including preparation'}); "
        f"{load_note()}"
    )
    # On an idle machine each one-thread run takes about its CPU time, --parallel of them at once.
    cpu = sum(r["cpu_seconds"] for r in rows)
    print(f"RL CPU time {cpu:.0f} s: about {cpu / args.parallel / 60:.1f} min of RL on {args.parallel} idle cores")
    print(f"wrote {os.path.join(args.output_dir, 'rl_learning.png')} and rl_learning.json")


if __name__ == "__main__":
    main()
