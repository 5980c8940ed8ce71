"""The GPU check: every stage run on the device as its user types it, each timed, with its peak GPU memory,
the attention kernel it used and its figures, in one table.

    bash bench/gpu_check.sh                          # on the GPU machine: installs .gpu_wheels/ first, then this
    python bench/gpu_check.py                        # the same where trl, deepspeed ... are installed
    python bench/gpu_check.py --device cpu --tiny    # every step, tiny, on a CPU (tests/test_gpu_check.py runs it)
    python bench/gpu_check.py --only ppo reload      # run these steps again; the others keep their last result

Models: Llama-architecture models built from a config with RANDOM weights (the GPU machine can download
nothing): a ~1B policy, a ~0.5B value model and a ~0.5B 2-label verifier, with the SmolLM2 tokenizer
(.gpu_wheels/tokenizer/, made by tools/gpu_wheels.sh). Their figures are for throughput, memory and whether each
stage runs on the device; they say nothing about quality.

Steps, in this order (each in its own processes, with its own timeout and log; a global --deadline skips the
steps that no longer fit, and says so):
  prepare           the random models (bench/random_models.py) and the data files
  sft_zero3         SFT_stage1.py via accelerate + configs/deepspeed_zero3.yaml, 1 process, padding-free batches
  ppo               RL_stage2.py PPO via ZeRO-3: 2 updates, policy + value + verifier, bf16, checkpointing
  serve_eval        evaluation/serve.py --backend transformers, evaluation/eval.py on the demo questions, stop
  inference         inference.py, one question
  verifier          train_verifier.py via accelerate (bf16 mixed precision), one epoch of verdict records
  sft_zero3_padded  sft_zero3 with the original's padded batches
  sft_plain         SFT_stage1.py via plain accelerate (no DeepSpeed), bf16 mixed precision, padding-free
  sft_trl           trl's SFTTrainer, padding-free, same model, rows and batch (bench/sft_trl_speed.py)
  grpo              RL_stage2.py --rl_algorithm grpo via ZeRO-3, 2 updates
  reload            every checkpoint saved above, reloaded on the device: policies generate, the verifier scores
serve_eval and inference use sft_zero3's checkpoint (the random policy when that step failed). On a CPU every
step runs in float32, as the tests run the stages (bf16 needs a GPU).

Writes <output_dir>/gpu_check.json, gpu_check.md (the table) and logs/<step>.log; exits 1 naming the steps that
failed or were skipped. Peak GPU memory is torch.cuda.max_memory_allocated, read inside every process of a step
when it ends (bench/gpu_probe/). MFU = 6 x parameters x trained tokens per second / --peak_tflops.
"""

import datetime
import glob
import importlib.metadata
import json
import math
import os
import platform
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass

from huatuo_o1 import cli
from huatuo_o1.records import (
    GROUND_TRUTH,
    REFERENCE_ANSWER,
    VERDICT,
    VERIFICATIONS,
    VERIFIED_RESPONSE,
    InputError,
    read_json,
)
from huatuo_o1.serving import free_port, stop_from_pid_file, stop_pid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_CODE = os.path.join(REPO, "bench", "gpu_probe")
GIB = 1 << 30
PEAK_NOTE = (
    "MFU = 6 x parameters x trained (real) tokens per second / the peak bf16 rate; 6 counts the forward and "
    "backward matrix products per parameter and token, not the recomputed forward of activation checkpointing "
    "nor attention. Peak: an 8192^3 bf16 matrix product as measured on the H200 this check was written for "
    "(about 790 TFLOP/s on random data); the datasheet's dense bf16 figure, 989, was not reached there (894 on "
    "all-zero data), so it would understate every MFU."
)
WEIGHTS_NOTE = (
    "Random weights (models built from a config): the figures are for throughput, memory and whether each "
    "stage runs; they say nothing about quality."
)
QUESTION = "A 35-year-old woman has had a fever and a stiff neck since this morning. What should be done first?"
# (GPU default, --tiny) of each size.
SIZES = {
    "policy": ("2048x16", "64x2"),  # hidden x layers: ~1.07B parameters (Llama-3.2-1B's shape), or tiny
    "value": ("1024x28", "64x2"),  # ~0.49B
    "verifier": ("1024x28", "64x2"),  # ~0.49B, 2 labels
    "sft_batch": (26, 4),  # rows per micro-batch: about 3,950 tokens of the demo rows (152 tokens each on average)
    "sft_steps": (30, 3),
    "rl_episodes": (16, 4),  # responses per update: one GPU's share of the seed's (1 x 16 accumulated)
    "response_length": (256, 16),
    "new_tokens": (32, 8),  # per evaluation answer, inference answer and reloaded checkpoint
}
DEADLINE = (450, 900)  # seconds for all the steps together (GPU, --tiny)


@dataclass
class Step:
    name: str
    what: str
    timeout: tuple  # seconds (GPU, tiny)


STEPS = [
    Step("prepare", "random models + data files", (150, 120)),
    Step("sft_zero3", "SFT_stage1.py, accelerate + DeepSpeed ZeRO-3, 1 process, padding-free", (180, 180)),
    Step("ppo", "RL_stage2.py PPO, ZeRO-3, 2 updates, policy + value + verifier", (240, 180)),
    Step("serve_eval", "evaluation/serve.py (transformers) + eval.py on the demo questions", (180, 180)),
    Step("inference", "inference.py, one question", (90, 90)),
    Step("verifier", "train_verifier.py via accelerate (bf16 mixed precision on a GPU), one epoch", (120, 120)),
    Step("sft_zero3_padded", "SFT_stage1.py, ZeRO-3, the original's padded batches", (150, 180)),
    Step("sft_plain", "SFT_stage1.py, plain accelerate (no DeepSpeed), padding-free", (150, 120)),
    Step("sft_trl", "trl SFTTrainer, padding-free (bench/sft_trl_speed.py)", (150, 180)),
    Step("grpo", "RL_stage2.py GRPO (trl), ZeRO-3, 2 updates", (180, 180)),
    Step("reload", "every saved checkpoint reloaded on the device, generating", (150, 120)),
]
STEP_NAMES = [step.name for step in STEPS]
SFT_STEPS = ("sft_zero3", "sft_zero3_padded", "sft_plain", "sft_trl")
# Steps whose checkpoint the reload step reloads.
CHECKPOINT_STEPS = ("sft_zero3", "sft_zero3_padded", "sft_plain", "ppo", "grpo", "verifier")
# The steps whose outputs a step reads, when they run in the same call (all read prepare's).
WAITS_FOR = {
    "prepare": (),
    "serve_eval": ("prepare", "sft_zero3"),
    "inference": ("prepare", "sft_zero3"),
    "reload": ("prepare", *CHECKPOINT_STEPS),
}
# Seconds the reload step keeps for itself while other steps run (GPU, --tiny).
RELOAD_RESERVE = (45, 0)
# Not worth starting with less time than this left.
MIN_STEP_SECONDS = 20
BROKEN_FLAG = "--no_such_flag"
PACKAGES_REPORTED = ("torch", "transformers", "accelerate", "deepspeed", "trl", "datasets", "openai", "flash-attn")


def as_flags(**values):
    """--name value pairs for a command line (booleans as True / False, as the stage scripts read them)."""
    return [item for name, value in values.items() for item in (f"--{name}", str(value))]


def as_typed(argv):
    """A command line as its user types it: `python` and `accelerate` for this interpreter and its launcher, paths
    inside the repository relative to it."""
    words = []
    for word in argv:
        if word == sys.executable:
            word = "python"
        elif word.endswith(os.sep + "accelerate") and os.path.dirname(word) == os.path.dirname(sys.executable):
            word = "accelerate"
        elif word.startswith(REPO + os.sep):
            word = os.path.relpath(word, REPO)
        words.append(shlex.quote(word))
    return " ".join(words)


def gib(value):
    return None if value is None else round(value / GIB, 2)


def finite(*numbers):
    return all(isinstance(n, (int, float)) and math.isfinite(n) for n in numbers)


def version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


class GPUCheck:
    def __init__(self, args):
        self.args = args
        self.tiny = args.tiny
        self.cpu = args.device == "cpu"
        self.out = os.path.abspath(args.output_dir)
        self.size = {name: getattr(args, name) if getattr(args, name) is not None else values[int(self.tiny)]
                     for name, values in SIZES.items()}  # fmt: skip
        self.models = os.path.join(self.out, "models")
        self.data = os.path.join(self.out, "data")
        self.logs = os.path.join(self.out, "logs")
        self.json_path = os.path.join(self.out, "gpu_check.json")
        self.deadline = args.deadline or DEADLINE[int(self.tiny)]
        self.results = {}
        if args.only and os.path.isfile(self.json_path):  # a rerun of some steps keeps the others' results
            self.results = read_json(self.json_path).get("steps", {})
        self.started = time.monotonic()
        self.live = set()  # process groups of the commands running now
        self.to_come = set()  # the steps of this call not ended yet

    # ---- paths and commands -------------------------------------------------------------------
    def step_dir(self, name, *parts):
        return os.path.join(self.out, "steps", name, *parts)

    def model(self, name):
        return os.path.join(self.models, name)

    def accelerate_launch(self, deepspeed):
        """`accelerate launch` with one process: ZeRO-3 from the config file, or plain (no DeepSpeed)."""
        beside = os.path.join(os.path.dirname(sys.executable), "accelerate")
        command = [beside] if os.path.isfile(beside) else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
        command += ["launch", "--num_processes", "1", "--num_machines", "1"]
        if deepspeed:
            config = "deepspeed_zero3_cpu.yaml" if self.cpu else "deepspeed_zero3.yaml"
            command += ["--config_file", os.path.join("configs", config), "--main_process_port", str(free_port())]
        else:
            command += ["--dynamo_backend", "no"]
        # on a CPU float32, as the tests run (bf16 needs a GPU in the RL stage)
        return command + ["--mixed_precision", "no" if self.cpu else "bf16"]

    def sft_policy(self):
        """The model serve_eval and inference use: sft_zero3's checkpoint, or the random policy when it failed."""
        if self.results.get("sft_zero3", {}).get("status") == "ok":
            return self.results["sft_zero3"]["checkpoint"]
        return self.model("policy")

    def checkpoints(self):
        """The checkpoints the steps that ended well saved (the reload step reloads them)."""
        return [self.results[step]["checkpoint"] for step in CHECKPOINT_STEPS
                if self.results.get(step, {}).get("status") == "ok"]  # fmt: skip

    def commands(self, name):
        """The step's commands, in order: [(label, argv, always)]; an `always` one runs even after a failure."""
        py, size, bf16 = sys.executable, self.size, not self.cpu
        if name == "prepare":
            flags = as_flags(tokenizer=self.args.tokenizer, output_dir=self.models, device=self.args.device,
                             dtype="bfloat16" if bf16 else "float32", policy=size["policy"], value=size["value"],
                             verifier=size["verifier"])  # fmt: skip
            return [("models", [py, "bench/random_models.py", *flags], False)]
        sft = dict(model_path=self.model("policy"), data_path=os.path.join(self.data, "sft_rows.json"),
                   train_bsz_per_gpu=size["sft_batch"], max_steps=size["sft_steps"], learning_rate="1e-5")  # fmt: skip
        if name in ("sft_zero3", "sft_zero3_padded", "sft_plain"):
            out = self.step_dir(name)
            flags = as_flags(**sft, output_dir=out, log_dir=os.path.join(out, "logs"), experiment_name="sft",
                             max_seq_len=4096, gradient_accumulation_steps=1, n_epochs=1,
                             batching="padded" if name.endswith("padded") else "padding_free",
                             save_training_state=False, resume=False)  # fmt: skip
            launch = self.accelerate_launch(deepspeed=name != "sft_plain")
            return [("train", launch + ["SFT_stage1.py", *flags], False)]
        if name == "sft_trl":
            flags = as_flags(**sft, output_file=self.step_dir(name, "trl_summary.json"))
            return [("train", [py, "bench/sft_trl_speed.py", *flags, "--bf16" if bf16 else "--no-bf16"], False)]
        if name in ("ppo", "grpo"):
            episodes = size["rl_episodes"]
            per_device = 1 if name == "ppo" else 2 if self.tiny else 4  # grpo: 2 completions of each prompt
            ppo_epochs = 3 if name == "ppo" and not self.tiny else 1  # the seed's 3
            flags = as_flags(
                model_name_or_path=self.model("policy"), reward_model_path=self.model("verifier"),
                dataset_name="data/demo_data.json", rl_algorithm=name, response_length=size["response_length"],
                temperature=0.5, local_rollout_forward_batch_size=8, num_ppo_epochs=ppo_epochs,
                num_mini_batches=1, total_episodes=2 * episodes, per_device_train_batch_size=per_device,
                gradient_accumulation_steps=episodes // per_device, bf16=bf16, gradient_checkpointing=True,
                output_dir=self.step_dir(name, "out"), save_strategy="no", logging_steps=1, kl_coef=0.03,
                learning_rate="5e-7", warmup_ratio=0.05, max_eval_samples=4, report_to="none",
            )  # fmt: skip
            if name == "ppo":
                flags += as_flags(value_model_path=self.model("value"))
            return [("train", self.accelerate_launch(deepspeed=True) + ["RL_stage2.py", *flags], False)]
        if name == "verifier":
            flags = as_flags(model_path=self.model("verifier"), data_path=os.path.join(self.data, "verdicts.json"),
                             output_dir=self.step_dir(name, "out"), n_epochs=1, train_bsz_per_gpu=8,
                             learning_rate="1e-5", max_length=512, logging_steps=1, resume=False)  # fmt: skip
            return [("train", self.accelerate_launch(deepspeed=False) + ["train_verifier.py", *flags], False)]
        if name == "serve_eval":
            port, model, pid_file = free_port(), self.sft_policy(), self.step_dir(name, "server.pid")
            serve = as_flags(model_path=model, port=port, backend="transformers", pid_file=pid_file,
                             log_file=self.step_dir(name, "server.log"), timeout=150)  # fmt: skip
            ask = as_flags(model_name=model, eval_file="evaluation/data/demo_eval_data.json", port=port, batch_size=8,
                           max_new_tokens=size["new_tokens"], output_dir=self.step_dir(name, "results"),
                           max_items_per_source=1 if self.tiny else -1)  # fmt: skip
            return [
                ("serve", [py, "evaluation/serve.py", *serve], False),
                ("eval", [py, "evaluation/eval.py", *ask], False),
                ("stop", [py, "evaluation/serve.py", "--stop", "--pid_file", pid_file], True),
            ]
        if name == "inference":
            flags = as_flags(model_path=self.sft_policy(), question=QUESTION, max_new_tokens=size["new_tokens"])
            return [("ask", [py, "inference.py", *flags], False)]
        if name == "reload":
            flags = as_flags(device=self.args.device, new_tokens=size["new_tokens"],
                             output_file=self.step_dir(name, "reload.json"))  # fmt: skip
            return [("reload", [py, "bench/reload_check.py", *flags, *self.checkpoints()], False)]
        raise AssertionError(name)

    # ---- running ------------------------------------------------------------------------------
    def environment(self, probe_dir):
        env = dict(os.environ)
        earlier = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env.update(
            PYTHONPATH=os.pathsep.join([PROBE_CODE, REPO] + earlier),
            GPU_CHECK_PROBE_DIR=probe_dir,
            HF_HUB_OFFLINE="1",
            HF_DATASETS_OFFLINE="1",
            TOKENIZERS_PARALLELISM="false",
            WANDB_MODE="disabled",
            PYTHONUNBUFFERED="1",
        )
        if self.cpu:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env.setdefault("OMP_NUM_THREADS", "1")  # tiny matrices: one thread is faster than several
        return env

    def run_command(self, argv, log, timeout, env):
        """Exit status, or None when it ran past timeout (then its whole process group is stopped)."""
        log.write(f"\n$ {as_typed(argv)}\n")
        log.flush()
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)  # fmt: skip
        self.live.add(process.pid)
        try:
            return process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            stop_pid(process.pid)
            process.wait()
            return None
        finally:
            self.live.discard(process.pid)

    def stop_everything(self):
        """Stop the steps still running (each in its own process group) and the evaluation server, if any: on the
        GPU machine, processes in a session of their own outlive the command that started them."""
        for pid in list(self.live):
            stop_pid(pid)
        pid_file = self.step_dir("serve_eval", "server.pid")
        if os.path.isfile(pid_file):
            try:
                stop_from_pid_file(pid_file)
            except InputError as error:
                print(f"gpu_check: the evaluation server was not stopped: {error}", file=sys.stderr)

    def left(self):
        return self.deadline - (time.monotonic() - self.started)

    def run_step(self, step):
        name = step.name
        if name == "prepare":
            self.write_data()
        shutil.rmtree(self.step_dir(name), ignore_errors=True)  # a rerun starts afresh
        probe_dir = self.step_dir(name, "probe")
        os.makedirs(probe_dir)
        result = {"what": step.what, "status": "ok", "exit": 0, "commands": {}}
        budget = min(step.timeout[int(self.tiny)], self.left() - self.reserved(step))
        log_path = os.path.join(self.logs, f"{name}.log")
        env = self.environment(probe_dir)
        started = time.monotonic()
        commands = self.commands(name)
        if name == self.args.break_step:
            commands[0][1].append(BROKEN_FLAG)
        print(f"=== {name}: {step.what} (at most {budget:.0f} s; log {os.path.relpath(log_path, REPO)})", flush=True)
        with open(log_path, "w", encoding="utf-8") as log:
            for label, argv, always in commands:
                if result["status"] != "ok" and not always:
                    continue
                command_started = time.monotonic()
                remaining = budget - (command_started - started)
                status = self.run_command(argv, log, remaining if not always else max(remaining, 30), env)
                result["commands"][label] = {"command": as_typed(argv), "exit": status,
                                             "seconds": round(time.monotonic() - command_started, 1)}  # fmt: skip
                if result["status"] == "ok" and status != 0:
                    result["status"], result["exit"] = ("timeout", None) if status is None else ("failed", status)
            server_log = self.step_dir(name, "server.log")
            if os.path.isfile(server_log):
                with open(server_log, encoding="utf-8", errors="replace") as f:
                    log.write("\n--- server log ---\n" + f.read())
        result["seconds"] = round(time.monotonic() - started, 1)
        result.update(self.probe(probe_dir))
        if result["status"] == "ok":
            try:
                result.update(getattr(self, f"figures_{name}")(result))
            except (OSError, KeyError, ValueError, StopIteration, TypeError) as error:
                reason = f"its outputs could not be read: {type(error).__name__}: {error}"
                result.update(status="failed", reason=reason)
        if result["status"] == "timeout":
            result["reason"] = f"ran past {budget:.0f} s and was stopped"
        elif result["status"] == "failed" and "reason" not in result:
            result["reason"] = f"exit status {result['exit']}; see the end of logs/{name}.log"
        self.results[name] = result
        print(f"    {name}: {result['status']} in {result['seconds']} s" + (f" ({result['reason']})"
              if "reason" in result else ""), flush=True)  # fmt: skip

    def run_and_tell(self, step, ended):
        """run_step, then put the step's name on `ended`, even when the check itself failed on the way."""
        try:
            self.run_step(step)
        except Exception as error:
            traceback.print_exc()
            reason = f"the check itself failed: {type(error).__name__}: {error}"
            self.results[step.name] = {"what": step.what, "status": "failed", "reason": reason}
        finally:
            ended.put(step.name)

    def probe(self, probe_dir):
        """Peak GPU memory over the step's processes, and the attention implementations its models used."""
        peaks, reserved, attention = [], [], set()
        for path in glob.glob(os.path.join(probe_dir, "*.json")):
            figures = read_json(path)
            peaks += figures.get("peak_allocated_bytes") or []
            reserved += figures.get("peak_reserved_bytes") or []
            attention.update(a for a in (figures.get("attention") or {}).values() if a)
        return {
            "peak_gpu_memory_gib": gib(max(peaks)) if peaks else None,
            "peak_gpu_reserved_gib": gib(max(reserved)) if reserved else None,
            "attention": sorted(attention),
        }

    def skip_reason(self, step):
        """Why the step cannot start now (None: it can)."""
        if step.name != "prepare" and self.results.get("prepare", {}).get("status") != "ok":
            return "needs prepare"
        if step.name == "reload" and not self.checkpoints():
            return "no checkpoint saved"
        if self.left() - self.reserved(step) < MIN_STEP_SECONDS:
            return f"out of time (--deadline {self.deadline} s)"
        return None

    def reserved(self, step):
        """Seconds kept for the reload step while it is still to come: every checkpoint must be reloaded."""
        return RELOAD_RESERVE[int(self.tiny)] if step.name != "reload" and "reload" in self.to_come else 0

    def run(self):
        """The steps in order; with --jobs N up to N at a time, each once the steps it reads from have ended."""
        os.makedirs(self.logs, exist_ok=True)
        todo = [step for step in STEPS if not self.args.only or step.name in self.args.only]
        unfinished = self.to_come = {step.name for step in todo}
        ended = queue.Queue()
        running = 0
        while todo or running:
            for step in list(todo):
                if running >= self.args.jobs:
                    break
                if any(name in unfinished for name in WAITS_FOR.get(step.name, ("prepare",))):
                    continue
                todo.remove(step)
                reason = self.skip_reason(step)
                if reason:
                    self.results[step.name] = {"what": step.what, "status": "skipped", "reason": reason}
                    print(f"=== {step.name}: skipped ({reason})", flush=True)
                    unfinished.discard(step.name)
                    continue
                running += 1
                threading.Thread(target=self.run_and_tell, args=(step, ended), daemon=True).start()
            if running:
                unfinished.discard(ended.get())
                running -= 1
        return self.write_report()

    # ---- data ---------------------------------------------------------------------------------
    def write_data(self):
        """SFT rows (the demo rows repeated to fill every step's batches) and verdict records (the search stage's
        layout: per problem, a right and a wrong answer with their verdicts), from the demo data."""
        os.makedirs(self.data, exist_ok=True)
        rows = read_json(os.path.join(REPO, "data", "demo_sft.json"))
        needed = self.size["sft_batch"] * self.size["sft_steps"]
        with open(os.path.join(self.data, "sft_rows.json"), "w", encoding="utf-8") as f:
            json.dump(rows * math.ceil(needed / len(rows)), f)
        problems = [p for p in read_json(os.path.join(REPO, "data", "demo_data.json")) if p.get(GROUND_TRUTH)]
        records = []
        for copy in range(1 if self.tiny else 4):
            for index, problem in enumerate(problems):
                reference = problem[GROUND_TRUTH]
                wrong = problems[(index + 1 + copy) % len(problems)][GROUND_TRUTH]
                records.append({GROUND_TRUTH: reference, VERIFICATIONS: [
                    {VERIFIED_RESPONSE: f"The most likely answer is {reference}.", REFERENCE_ANSWER: reference,
                     VERDICT: True},
                    {VERIFIED_RESPONSE: f"The most likely answer is {wrong}.", REFERENCE_ANSWER: reference,
                     VERDICT: False},
                ]})  # fmt: skip
        with open(os.path.join(self.data, "verdicts.json"), "w", encoding="utf-8") as f:
            json.dump(records, f)

    # ---- figures, per step ----------------------------------------------------------------------
    def figures_prepare(self, result):
        models = read_json(os.path.join(self.models, "models.json"))
        return {"models": {name: {k: m[k] for k in ("parameters", "hidden_size", "layers")}
                           for name, m in models["models"].items()},
                "device_name": models["device_name"], "torch_cuda": models.get("torch_cuda"),
                "build_seconds": models["seconds"]}  # fmt: skip

    def mfu(self, tokens_per_second):
        if self.cpu or tokens_per_second is None or "prepare" not in self.results:
            return None
        parameters = self.results["prepare"]["models"]["policy"]["parameters"]
        return round(6 * parameters * tokens_per_second / (self.args.peak_tflops * 1e12), 4)

    def sft_figures(self, summary, expected_batching):
        steady = summary["throughput"]["after_first_step"]
        if steady["real_tokens_per_second"] is None:  # a single step: the whole loop's rate
            steady = summary["throughput"]
        real, processed = steady["real_tokens_per_second"], steady["processed_tokens_per_second"]
        losses = summary["first_loss"], summary["last_loss"]
        if summary["optimizer_steps"] != self.size["sft_steps"] or not finite(*losses, real):
            raise ValueError(f"{summary['optimizer_steps']} steps, losses {losses}, {real} tokens/s")
        if expected_batching and summary.get("batching") != expected_batching:
            raise ValueError(f"batching {summary.get('batching')}, expected {expected_batching}")
        return {
            "optimizer_steps": summary["optimizer_steps"],
            "first_loss": summary["first_loss"],
            "last_loss": summary["last_loss"],
            "tokens_per_second": real,
            "processed_tokens_per_second": processed,
            "padding_share": round(1 - real / processed, 4) if processed else None,
            "mfu": self.mfu(real),
            "loop_seconds": summary["throughput"]["seconds"],
        }

    def sft_summary(self, name):
        summary = read_json(self.step_dir(name, "sft", "training_summary.json"))
        batching = "padded" if name.endswith("padded") else "padding_free"
        return {**self.sft_figures(summary, batching), "checkpoint": summary["final_checkpoint"]}

    def figures_sft_zero3(self, result):
        return self.sft_summary("sft_zero3")

    def figures_sft_zero3_padded(self, result):
        return self.sft_summary("sft_zero3_padded")

    def figures_sft_plain(self, result):
        return self.sft_summary("sft_plain")

    def figures_sft_trl(self, result):
        return self.sft_figures(read_json(self.step_dir("sft_trl", "trl_summary.json")), None)

    def rl_summary(self, name):
        summary = read_json(self.step_dir(name, "out", "rl_summary.json"))
        if summary["updates"] < 1:
            raise ValueError("no update")
        figures = {
            "updates": summary["updates"],
            "episodes_per_update": summary["episodes_per_update"],
            "train_seconds": summary["seconds"],
            "eval_start_reward": summary["eval_start"].get("mean_reward"),
            "eval_end_reward": summary["eval_end"].get("mean_reward"),
            "checkpoint": summary["policy_dir"],
        }
        if not os.path.isfile(os.path.join(summary["policy_dir"], "config.json")):
            raise ValueError(f"no model saved in {summary['policy_dir']}")
        return figures

    def figures_ppo(self, result):
        figures = self.rl_summary("ppo")
        updates = read_json(self.step_dir("ppo", "out", "rl_log.jsonl"))
        phases = ("time/generate", "time/forward", "time/reward", "time/optimise")
        if len(updates) != figures["updates"] or not all(finite(u[p], u["pg_loss"], u["vf_loss"])
                                                         for u in updates for p in phases):  # fmt: skip
            raise ValueError(f"rl_log.jsonl has {len(updates)} complete updates of {figures['updates']}")
        figures["seconds_per_update"] = [
            {p.split("/")[1]: round(u[p], 2) for p in phases} | {"total": round(sum(u[p] for p in phases), 2)}
            for u in updates
        ]
        figures["response_length"] = [u["val/response_length"] for u in updates]
        return figures

    def figures_grpo(self, result):
        figures = self.rl_summary("grpo")
        logged = read_json(self.step_dir("grpo", "out", "rl_trl_log.json"))
        figures["seconds_per_update"] = [{"total": round(entry["step_time"], 2)} for entry in logged
                                         if "step_time" in entry]  # fmt: skip
        return figures

    def figures_verifier(self, result):
        summary = read_json(self.step_dir("verifier", "out", "verifier_summary.json"))
        steady = summary["throughput"]["after_first_step"]
        if not finite(summary["first_loss"], summary["last_loss"]):
            raise ValueError(f"losses {summary['first_loss']} -> {summary['last_loss']}")
        return {
            "optimizer_steps": summary["steps"],
            "first_loss": summary["first_loss"],
            "last_loss": summary["last_loss"],
            "tokens_per_second": steady["real_tokens_per_second"],
            "heldout_accuracy": summary["heldout"]["accuracy"],
            "checkpoint": summary["output_dir"],
        }

    def figures_serve_eval(self, result):
        report = read_json(next(iter(glob.glob(self.step_dir("serve_eval", "results", "*_report.json")))))
        overall = report["overall"]
        if not overall.get("n"):
            raise ValueError("no question answered")
        return {
            "model": report["model"],
            "answers": overall["n"],
            "answers_per_second": round(overall["n"] / result["commands"]["eval"]["seconds"], 2),
            "mean_reply_tokens": overall.get("mean_completion_tokens"),
            "paper_accuracy": overall.get("paper_accuracy"),
        }

    def figures_inference(self, result):
        return {"model": self.sft_policy()}

    def figures_reload(self, result):
        reloaded = read_json(self.step_dir("reload", "reload.json"))
        return {"reloaded": {os.path.relpath(folder, self.out): {k: v for k, v in figures.items() if k != "text"}
                             for folder, figures in reloaded.items()}}  # fmt: skip

    # ---- report -------------------------------------------------------------------------------
    def comparisons(self):
        rate = {name: self.results.get(name, {}).get("tokens_per_second") for name in SFT_STEPS}

        def ratio(a, b):
            return round(rate[a] / rate[b], 3) if rate[a] and rate[b] else None

        return {
            "sft_plain_vs_trl": ratio("sft_plain", "sft_trl"),
            "sft_zero3_vs_plain": ratio("sft_zero3", "sft_plain"),
            "sft_padding_free_vs_padded": ratio("sft_zero3", "sft_zero3_padded"),
        }

    def write_report(self):
        steps = {name: self.results[name] for name in STEP_NAMES if name in self.results}
        failed = [name for name, r in steps.items() if r["status"] in ("failed", "timeout")]
        skipped = [name for name, r in steps.items() if r["status"] == "skipped"]
        report = {
            "check": "bench/gpu_check.py",
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
            "device": self.args.device,
            "tiny": self.tiny,
            "machine": {
                "device_name": steps.get("prepare", {}).get("device_name"),
                "torch_cuda": steps.get("prepare", {}).get("torch_cuda"),
                "python": platform.python_version(),
                **{name: version(name) for name in PACKAGES_REPORTED},
            },
            "weights": WEIGHTS_NOTE,
            "peak_bf16_tflops": self.args.peak_tflops,
            "mfu_note": PEAK_NOTE,
            "sizes": self.size,
            "steps": steps,
            "comparisons": self.comparisons(),
            "failed": failed,
            "skipped": skipped,
            "ok": not failed and not skipped,
            "seconds": round(time.monotonic() - self.started, 1),
        }
        with open(self.json_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        os.replace(self.json_path + ".tmp", self.json_path)
        table = markdown(report)
        with open(os.path.join(self.out, "gpu_check.md"), "w", encoding="utf-8") as f:
            f.write(table)
        print("\n" + table)
        if failed:
            print(f"gpu_check: FAILED: {', '.join(failed)} (logs in {os.path.relpath(self.logs, REPO)})", flush=True)
        if skipped:
            print(f"gpu_check: SKIPPED: {', '.join(skipped)} (their reasons are in the table)", flush=True)
        return 1 if failed or skipped else 0


def headline(name, result):
    """The figures of a step in a few words, for the table."""
    if result.get("status") != "ok":
        return result.get("reason", "")
    if name == "prepare":
        return ", ".join(f"{m} {v['parameters'] / 1e9:.2f}B" for m, v in result["models"].items())
    if name in SFT_STEPS:
        mfu = f", MFU {100 * result['mfu']:.1f}%" if result.get("mfu") is not None else ""
        padding = f", padding {100 * result['padding_share']:.0f}%" if result.get("padding_share") else ""
        return (f"{result['tokens_per_second']:.0f} tokens/s{mfu}{padding}; loss {result['first_loss']:.3f} -> "
                f"{result['last_loss']:.3f} over {result['optimizer_steps']} steps")  # fmt: skip
    if name == "ppo":
        last = result["seconds_per_update"][-1]
        return (f"{result['updates']} updates of {result['episodes_per_update']}; last update {last['total']} s = "
                f"generate {last['generate']} + forward {last['forward']} + reward {last['reward']} + optimise "
                f"{last['optimise']}")  # fmt: skip
    if name == "grpo":
        times = ", ".join(str(u["total"]) for u in result["seconds_per_update"])
        return f"{result['updates']} steps of {result['episodes_per_update']} completions; seconds per step {times}"
    if name == "verifier":
        return (f"{result['tokens_per_second']:.0f} tokens/s; loss {result['first_loss']} -> {result['last_loss']} "
                f"over {result['optimizer_steps']} steps")  # fmt: skip
    if name == "serve_eval":
        return f"{result['answers']} answers, {result['answers_per_second']} per second"
    if name == "reload":
        good = sum(r.get("ok", False) for r in result["reloaded"].values())
        return f"{good} of {len(result['reloaded'])} checkpoints reloaded and generated"
    return ""


def markdown(report):
    machine = report["machine"]
    lines = [
        f"# GPU check, {report['date']}",
        "",
        f"`{report['command']}` on {machine['device_name'] or report['device']}: Python {machine['python']}, "
        f"torch {machine['torch']}, transformers {machine['transformers']}, accelerate {machine['accelerate']}, "
        f"deepspeed {machine['deepspeed']}, trl {machine['trl']}. {report['weights']}",
        "",
        "| step | status | seconds | peak GPU GiB | attention | figures |",
        "|---|---|---|---|---|---|",
    ]
    for name, result in report["steps"].items():
        peak = result.get("peak_gpu_memory_gib")
        lines.append(
            f"| {name} | {result['status']} | {result.get('seconds', '')} | {'' if peak is None else peak} | "
            f"{', '.join(result.get('attention') or [])} | {headline(name, result)} |"
        )
    comparisons = report["comparisons"]
    lines += [
        "",
        f"SFT tokens/s ratios (after the first step, real tokens): ours (plain accelerate) / trl SFTTrainer "
        f"{comparisons['sft_plain_vs_trl']}; ZeRO-3 / plain {comparisons['sft_zero3_vs_plain']}; padding-free / "
        f"padded {comparisons['sft_padding_free_vs_padded']}.",
        "",
        f"{report['mfu_note']} Used: {report['peak_bf16_tflops']} TFLOP/s.",
        "",
        f"Failed: {', '.join(report['failed']) or 'none'}; skipped: {', '.join(report['skipped']) or 'none'}; "
        f"{report['seconds']} s in all.",
        "",
    ]
    return "\n".join(lines)


def main():
    parser = cli.argument_parser(__doc__)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny models and sizes (with --device cpu: make test)")
    parser.add_argument("--output_dir", default=os.path.join(REPO, "bench_out", "gpu"))
    default_tokenizer = os.path.join(REPO, ".gpu_wheels", "tokenizer")
    if not os.path.isdir(default_tokenizer):
        default_tokenizer = os.path.join(REPO, ".cache", "models", "SmolLM2-135M-Instruct")
    parser.add_argument("--tokenizer", default=default_tokenizer, help="a tokenizer folder with its chat template")
    parser.add_argument("--only", nargs="+", choices=STEP_NAMES, help="run these steps; keep the others' results")
    parser.add_argument("--peak_tflops", type=float, default=790.0, help="the device's bf16 peak for MFU")
    parser.add_argument("--jobs", type=int, default=1, help="steps at a time (1 on a GPU: timings must not mix)")
    parser.add_argument("--deadline", type=float, help=f"seconds for all the steps (default {DEADLINE[0]}, "
                        f"{DEADLINE[1]} with --tiny)")  # fmt: skip
    for name, (gpu, tiny) in SIZES.items():
        kind = type(gpu)
        parser.add_argument(f"--{name}", type=kind, default=None, help=f"default {gpu} ({tiny} with --tiny)")
    parser.add_argument("--break_step", choices=STEP_NAMES, help=f"give this step the unknown flag {BROKEN_FLAG} "
                        "(shows how a failing step is reported)")  # fmt: skip
    args = parser.parse_args()
    check = GPUCheck(args)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # a time limit's `timeout`
    try:
        return check.run()
    finally:
        check.stop_everything()


if __name__ == "__main__":
    sys.exit(main())
