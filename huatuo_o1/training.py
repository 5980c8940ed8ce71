"""The training toolkit SFT, the verifier and PPO share: one owner of the distributed machinery.

- make_accelerator: accelerate + DeepSpeed set up from the stage's own flags (batch shape, clipping),
  with the gloo backend where there is no CUDA.
- make_schedule: the learning-rate schedule, saved with the checkpoints, stepped when the stage says.
- optimizer_step: clip (the same max_grad_norm DeepSpeed clips at inside its own step), step, zero.
- save_model_folder: a Hugging Face folder of full weights (gathered under ZeRO-3) and the tokenizer, its manifest
  (huatuo_o1/manifests.py) written last; a LoRA model's with its adapters merged, the adapter alone beside
  (huatuo_o1/lora.py).
- Checkpoints: <run_dir>/checkpoint-<step>/ = that folder + trainer_state.json + training_state/
  (accelerate's optimizer, scheduler and random states) + manifest.json, written whole or not at all, rotated,
  checked against their manifests before a resume trusts them (the newest that verifies wins), resumed.
- changed_inputs: a rerun into a folder whose run had other data or settings is refused, not mixed.
- resume_or_refuse: what a rerun does about the run already in its folder (Resumption: fresh, resume, finished).
- checkpoint_to_resume: the checkpoint a --resume_from_checkpoint resumes (it, or the newest older one that verifies).
- resume_flag / report_to_flag / verify_flag: the --resume, --report_to and --verify_checkpoints flags the trainers
  share.
- LoopTimer: a training loop's seconds (saving left out) and tokens per second, the first step apart.
- pad / pad_batch: sequences to a rectangle, on the right or the left.
- trackers: the --report_to loggers that are installed.

Each stage keeps its own arithmetic (when its schedule steps, how many warmup steps, what its state
holds); the toolkit only does the mechanics, the same way for all three.
"""

import contextlib
import importlib.util
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import InitProcessGroupKwargs, gather_object
from transformers import get_scheduler

from huatuo_o1 import cli, lora, manifests
from huatuo_o1.records import InputError, read_json, write_json_atomic

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TRAINER_STATE = "trainer_state.json"
TRAINING_STATE = "training_state"
CHECKPOINT_PREFIX = "checkpoint-"
# --report_to's loggers, each with the packages that provide it
TRACKER_PACKAGES = {"wandb": ("wandb",), "tensorboard": ("tensorboard", "tensorboardX")}


def make_accelerator(
    *,
    micro_batch_size: int,
    gradient_accumulation_steps: int,
    max_grad_norm: float,
    log_with: list | None = None,
    project_dir: str | None = None,
) -> Accelerator:
    """An Accelerator whose batch shape and clipping come from the flags, not from the accelerate config file.

    Without CUDA, accelerate leaves the process-group backend unset and DeepSpeed then counts another
    world size; naming gloo makes a CPU run take the same path as a GPU run.
    """
    # accelerate launch exports the config file's accumulation count, which would override the flag
    os.environ["ACCELERATE_GRADIENT_ACCUMULATION_STEPS"] = str(gradient_accumulation_steps)
    launched = cli.launched_processes() > 1
    handlers = [InitProcessGroupKwargs(backend="gloo")] if launched and not torch.cuda.is_available() else []
    accelerator = Accelerator(
        gradient_accumulation_steps=gradient_accumulation_steps,
        log_with=log_with or None,
        project_dir=project_dir,
        kwargs_handlers=handlers,
    )
    accelerator.gradient_accumulation_steps = gradient_accumulation_steps
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        # DeepSpeed clips inside its own step: at the flag's value, whatever the config file says (0: off).
        plugin.deepspeed_config.update(
            {
                "train_micro_batch_size_per_gpu": micro_batch_size,
                "gradient_accumulation_steps": gradient_accumulation_steps,
                "train_batch_size": micro_batch_size * gradient_accumulation_steps * accelerator.num_processes,
                "gradient_clipping": max(max_grad_norm or 0.0, 0.0),
            }
        )
    return accelerator


def make_schedule(
    accelerator: Accelerator, name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """transformers' schedule `name` over total_steps, for an optimizer accelerate prepared.

    The stage calls its step() itself, once per the stage's own unit (SFT and the verifier: each
    optimizer step; PPO: each update, as the original), so it is not handed to accelerate's prepare,
    which would step it once per process; it is saved and restored with the checkpoints all the same.
    """
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)
    return scheduler


def applied_max_grad_norm(accelerator: Accelerator, model: torch.nn.Module, max_grad_norm: float) -> float:
    """The clipping really applied: DeepSpeed's engine reports its own; otherwise the flag (0: off)."""
    engine_clipping = getattr(model, "gradient_clipping", None)
    return engine_clipping() if callable(engine_clipping) else max(max_grad_norm or 0.0, 0.0)


def optimizer_step(
    accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_grad_norm: float
) -> torch.Tensor | None:
    """Inside `accelerator.accumulate(model)`, after backward: clip at the end of an accumulation, step, zero.

    Returns the gradient norm before clipping where we clip (None under DeepSpeed, whose engine clips
    at the same value, or with clipping off). The optimizer only really steps at the accumulation's end.
    """
    norm = None
    if (
        accelerator.sync_gradients
        and max_grad_norm
        and max_grad_norm > 0
        and accelerator.state.deepspeed_plugin is None
    ):
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return norm


def save_model_folder(
    accelerator: Accelerator,
    model: torch.nn.Module,
    tokenizer: "PreTrainedTokenizerBase",
    folder: str,
    submodule: str | None = None,
    manifest: bool = True,
    merge_lora: bool = True,
) -> None:
    """Full weights (gathered from the shards under ZeRO-3) and the tokenizer, as a Hugging Face folder, with its
    manifest written last (sealed_model_folder).

    submodule: save only that part of a wrapper module (PPO's policy inside policy + value model).
    manifest False: the files only (a checkpoint writes one manifest over them and its training state).
    A PEFT model (LoRA): its adapter alone goes to folder/adapter/ (peft's own layout, which peft loads onto the
    base model); with merge_lora the folder also holds the model with its adapters merged (lora.merged_state_dict),
    the folder every later stage loads as it loads a fully trained one; without it, the tokenizer only beside.
    Every process must call this: they all take part in the gather and the digests.
    """
    with sealed_model_folder(accelerator, folder, manifest) as target:
        state_dict = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            unwrapped = accelerator.unwrap_model(model)
            if submodule:
                prefix = submodule + "."
                state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
                unwrapped = getattr(unwrapped, submodule)
            whole_model = True
            if lora.is_peft_model(unwrapped):
                adapter_folder = os.path.join(target, lora.ADAPTER_FOLDER)
                unwrapped.save_pretrained(adapter_folder, state_dict=state_dict, safe_serialization=True)
                whole_model = merge_lora
                if merge_lora:
                    state_dict, unwrapped = lora.merged_state_dict(unwrapped, state_dict), unwrapped.get_base_model()
            if whole_model:
                unwrapped.config.dtype = next(iter(state_dict.values())).dtype  # what is stored, for dtype="auto"
                unwrapped.save_pretrained(target, state_dict=state_dict, safe_serialization=True)
            tokenizer.save_pretrained(target)


@contextlib.contextmanager
def sealed_model_folder(accelerator: Accelerator, folder: str, manifest: bool = True):
    """Yields where to save a model (every process enters); on leaving, the files are in `folder` and listed in its
    manifest, written last.

    The save goes to a fresh staging folder inside `folder` first, so that the manifest lists exactly the files of
    this save, whatever else `folder` holds (a run's log and checkpoints, an earlier save's files); they then move
    up one by one, and until the new manifest is written the old one makes the half-moved folder read as damaged.
    """
    if not manifest:
        yield folder
        accelerator.wait_for_everyone()
        return
    staging = os.path.join(folder, ".saving")
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    accelerator.wait_for_everyone()
    yield staging
    accelerator.wait_for_everyone()
    entries = described_everywhere(staging)
    if accelerator.is_main_process:
        for path, _ in manifests.listing(staging):
            os.makedirs(os.path.dirname(os.path.join(folder, path)), exist_ok=True)
            os.replace(os.path.join(staging, path), os.path.join(folder, path))
        shutil.rmtree(staging)
        manifests.write(folder, entries)
    accelerator.wait_for_everyone()


def described_everywhere(folder: str, run_parts: Sequence[str] = ()) -> list[dict]:
    """Manifest entries of every file under folder, each process digesting its share; every process gets them all."""
    state = PartialState()
    share = (state.process_index, state.num_processes)
    return gather_object(manifests.describe(folder, manifests.listing(folder), run_parts, share))


def folder_problems(folder: str, mode: str, model_only: bool = False) -> list[str]:
    """manifests.problems of folder, each process checking its share of the files; every process gets them all."""
    state = PartialState()
    share = (state.process_index, state.num_processes)
    return sorted(set(gather_object(manifests.problems(folder, mode, model_only, share))))


def step_of(checkpoint: str) -> int | None:
    """The step in a checkpoint-<step> folder's name (None for any other name)."""
    name = os.path.basename(os.path.normpath(checkpoint))
    step = name[len(CHECKPOINT_PREFIX) :]
    return int(step) if name.startswith(CHECKPOINT_PREFIX) and step.isdigit() else None


def has_training_state(checkpoint: str) -> bool:
    return os.path.isdir(os.path.join(checkpoint, TRAINING_STATE))


class Checkpoints:
    """<run_dir>/checkpoint-<step>/: a Hugging Face folder, trainer_state.json (the stage's own counters),
    training_state/ (what accelerate needs to resume) and manifest.json (every file's size and SHA-256, written last).

    keep: how many checkpoints stay (None: all). resume_all: whether older checkpoints keep their
    training_state too (large: optimizer states), or only the newest does. verify: how a checkpoint is checked
    against its manifest before a resume or "nothing to do" trusts it ("full": sizes and digests; "sizes").
    merge_lora: a LoRA model's checkpoint holds the merged model besides its adapter/ (save_model_folder).
    """

    def __init__(
        self,
        run_dir: str,
        keep: int | None = None,
        resume_all: bool = False,
        verify: str = "full",
        merge_lora: bool = True,
    ):
        self.run_dir, self.keep, self.resume_all, self.verify = run_dir, keep, resume_all, verify
        self.merge_lora = merge_lora

    @staticmethod
    def is_complete(checkpoint: str) -> bool:
        """Whether a folder is a whole checkpoint: trainer_state.json is written before the manifest, which comes
        last; a folder whose manifest lists a trainer_state.json it lacks is whole but damaged (newest_sound)."""
        if os.path.isfile(os.path.join(checkpoint, TRAINER_STATE)):
            return True
        try:
            manifest = manifests.read(checkpoint)
        except InputError:
            return True  # a manifest that cannot be read: newest_sound names it
        return manifest is not None and any(entry["path"] == TRAINER_STATE for entry in manifest["files"])

    def list(self) -> list[str]:
        """Complete checkpoints (is_complete), oldest first."""
        if not os.path.isdir(self.run_dir):
            return []
        found = []
        for name in os.listdir(self.run_dir):
            path = os.path.join(self.run_dir, name)
            step = step_of(name)
            if step is not None and Checkpoints.is_complete(path):
                found.append((step, path))
        return [path for _, path in sorted(found)]

    @staticmethod
    def read_state(checkpoint: str) -> dict:
        """A checkpoint's trainer_state.json (the stage's counters), without loading anything else."""
        state = read_json(os.path.join(checkpoint, TRAINER_STATE))
        if not isinstance(state, dict):
            raise InputError(f"{os.path.join(checkpoint, TRAINER_STATE)}: not a JSON object of a run's counters")
        return state

    def latest_resumable(self) -> str | None:
        resumable = [c for c in self.list() if has_training_state(c)]
        return resumable[-1] if resumable else None

    def newest_sound(self, candidates: Sequence[str]) -> tuple[str | None, Sequence[tuple[str, str]]]:
        """The newest of candidates (oldest first) whose files match its manifest (`verify`), checked from the newest
        down; and (checkpoint, what does not match) for each newer one passed over."""
        skipped = []
        for checkpoint in reversed(candidates):
            found = folder_problems(checkpoint, self.verify)
            if not found:
                return checkpoint, skipped
            skipped.append((checkpoint, manifests.one_line(found)))
        return None, skipped

    def save(
        self,
        accelerator: Accelerator,
        model: torch.nn.Module,
        tokenizer: "PreTrainedTokenizerBase",
        step: int,
        trainer_state: dict,
        with_training_state: bool = True,
        submodule: str | None = None,
    ) -> str:
        """Write checkpoint-<step> beside as .tmp, its manifest last, then rename it: it appears complete or not at
        all. Rotate."""
        final_path = os.path.join(self.run_dir, f"{CHECKPOINT_PREFIX}{step}")
        tmp_path = final_path + ".tmp"
        if accelerator.is_main_process and os.path.isdir(tmp_path):
            shutil.rmtree(tmp_path)
        accelerator.wait_for_everyone()
        save_model_folder(
            accelerator, model, tokenizer, tmp_path, submodule, manifest=False, merge_lora=self.merge_lora
        )
        if with_training_state:
            accelerator.save_state(os.path.join(tmp_path, TRAINING_STATE))
            accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(os.path.join(tmp_path, TRAINER_STATE), trainer_state)
        accelerator.wait_for_everyone()
        entries = described_everywhere(tmp_path, run_parts=(TRAINER_STATE, TRAINING_STATE))
        if accelerator.is_main_process:
            manifests.write(tmp_path, entries, removable=(TRAINING_STATE,))
            if os.path.isdir(final_path):
                shutil.rmtree(final_path)
            os.replace(tmp_path, final_path)
            self.rotate(step)
        accelerator.wait_for_everyone()
        return final_path

    def rotate(self, saved_step: int | None = None) -> None:
        """Older checkpoints lose their training state (unless resume_all), the oldest beyond `keep` go. Only those
        up to saved_step count: newer ones are a run's the resume passed over (damaged), replaced when reached."""
        checkpoints = [c for c in self.list() if saved_step is None or step_of(c) <= saved_step]
        if not self.resume_all:
            for old in checkpoints[:-1]:  # only the newest one is needed to resume; its optimizer state is large
                shutil.rmtree(os.path.join(old, TRAINING_STATE), ignore_errors=True)
        if self.keep:
            for old in checkpoints[: -self.keep]:
                shutil.rmtree(old)

    @staticmethod
    def load(accelerator: Accelerator, checkpoint: str) -> dict:
        """Restore accelerate's state from a checkpoint; returns the stage's trainer_state."""
        trainer_state = Checkpoints.read_state(checkpoint)
        accelerator.load_state(os.path.join(checkpoint, TRAINING_STATE))
        return trainer_state

    def remove_all(self, accelerator: Accelerator) -> None:
        if accelerator.is_main_process:
            for path in self.list():
                shutil.rmtree(path)
        accelerator.wait_for_everyone()


def changed_inputs(saved: dict | None, current: dict) -> list[str]:
    """What differs between the inputs a run was saved with and this run's: data, model, settings.

    A rerun that resumes (or skips) a run made with other inputs would mix them silently. A run saved
    before inputs were recorded (saved is None) is taken as it is. An input only one of them names (a setting that is
    recorded only when used, such as LoRA's) counts as None in the other.
    """
    if saved is None:
        return []
    names = list(current) + [name for name in saved if name not in current]
    return [
        "the data" if name == "data" else f"{name} {saved.get(name)!r} -> {current.get(name)!r}"
        for name in names
        if saved.get(name) != current.get(name)
    ]


@dataclass(frozen=True)
class Resumption:
    """What a run does about the run already in its folder (resume_or_refuse decides it before anything loads).

    action: "fresh" (train from the start), "resume" (continue from `checkpoint`, through Checkpoints.load) or
    "finished" (these inputs are trained already: nothing to do; `checkpoint` is the run's newest, None where only
    its summary is left). replaced: with --resume False, the earlier run's checkpoints, removed once the model is
    ready to train. skipped: a line for each newer checkpoint passed over because it does not match its manifest
    ("<checkpoint> skipped: <file> does not match its manifest (<how>)"), for the stage to show.
    """

    action: Literal["fresh", "resume", "finished"]
    checkpoint: str | None = None
    replaced: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def nothing_to_do(self, say: Callable[[str], None], finished: str) -> bool:
        """Shows the checkpoints passed over; for a finished run also `finished` (what it holds, how to train again),
        and True: the stage then stops."""
        for line in self.skipped:
            say(line)
        if self.action == "finished":
            say(finished)
        return self.action == "finished"


START_AFRESH = "pass --resume False to start afresh (the checkpoints are removed)"


def resume_or_refuse(
    checkpoints: Checkpoints,
    run_inputs: dict,
    resume: bool,
    *,
    other_inputs: Callable[[str], str],
    is_finished: Callable[[dict], bool] | None = None,
    unresumable: Callable[[str], str] | None = None,
    summary_path: str | None = None,
) -> Resumption:
    """What to do about an earlier run in checkpoints.run_dir: resume it, leave it (finished), or refuse (InputError).

    resume False: fresh, the earlier checkpoints in `replaced`. resume True: the newest checkpoint whose files match
    its manifest is the run's (newer ones are passed over, each named in `skipped`; none that matches: InputError
    naming the damaged file). The earlier run's inputs (saved in that checkpoint's trainer_state.json or, where no
    checkpoint is left, in summary_path's "inputs") must be run_inputs (changed_inputs), else
    InputError(other_inputs(what changed)). Then
    - a checkpoint whose state is_finished: finished;
    - a checkpoint saved without training state: InputError(unresumable(it)) (or, when newer ones were passed over,
      an InputError naming their damaged file); without `unresumable` the run resumes from the newest one that has
      it and matches its manifest, or starts afresh;
    - else: resume from the checkpoint;
    - no checkpoint, but a summary that names its inputs (a stage that removes its checkpoints once done): finished,
      once the summary's folder (the trained model beside it) matches its manifest, else InputError naming the file;
    - nothing: fresh.
    """
    earlier = checkpoints.list()
    if not resume:
        return Resumption("fresh", replaced=tuple(earlier))
    newest, passed_over = checkpoints.newest_sound(earlier)
    if earlier and newest is None:
        raise InputError(
            f"{passed_over[0][1]}; no checkpoint of {checkpoints.run_dir} matches its manifest: {START_AFRESH}"
        )
    if newest:
        state = Checkpoints.read_state(newest)
        saved_inputs = state.get("inputs")
    elif summary_path and os.path.isfile(summary_path):
        summary = read_json(summary_path)
        saved_inputs = summary.get("inputs") if isinstance(summary, dict) else None
    else:
        return Resumption("fresh")
    changed = changed_inputs(saved_inputs, run_inputs)
    if changed:
        raise InputError(other_inputs("; ".join(changed)))
    if not newest:
        if saved_inputs is None:
            return Resumption("fresh")
        folder = os.path.dirname(summary_path) or "."
        found = folder_problems(folder, checkpoints.verify)
        if found:
            raise InputError(
                f"{manifests.one_line(found)}; {folder} holds a finished run whose files are damaged: pass --resume "
                "False to train again"
            )
        return Resumption("finished")
    skipped = tuple(f"{checkpoint} skipped: {problem}" for checkpoint, problem in passed_over)
    if is_finished is not None and is_finished(state):
        return Resumption("finished", newest, skipped=skipped)
    if has_training_state(newest):
        return Resumption("resume", newest, skipped=skipped)
    if unresumable is not None:
        if passed_over:
            raise InputError(
                f"{passed_over[0][1]}; {newest}, the newest checkpoint that matches its manifest, has no training "
                f"state to resume from (only the newest checkpoint keeps it): {START_AFRESH}"
            )
        raise InputError(unresumable(newest))
    older = [c for c in earlier if step_of(c) < step_of(newest) and has_training_state(c)]
    resumable, passed_over = checkpoints.newest_sound(older)
    if older and resumable is None:
        raise InputError(
            f"{passed_over[0][1]}; no checkpoint of {checkpoints.run_dir} matches its manifest: {START_AFRESH}"
        )
    skipped += tuple(f"{checkpoint} skipped: {problem}" for checkpoint, problem in passed_over)
    return Resumption("resume", resumable, skipped=skipped) if resumable else Resumption("fresh", skipped=skipped)


def checkpoint_to_resume(checkpoint: str, verify: str) -> tuple[str, tuple[str, ...]]:
    """The checkpoint a --resume_from_checkpoint resumes: `checkpoint` when its files match its manifest, else the
    newest older checkpoint-<step> beside it with training state that does; and a line for each one passed over.
    InputError naming the damaged file when none matches, or naming trainer_state.json when it cannot be read
    (checked here, before anything loads)."""
    named = os.path.normpath(checkpoint)
    siblings = Checkpoints(os.path.dirname(named) or ".", verify=verify)
    candidates = [named]
    if step_of(named) is not None:
        older = [c for c in siblings.list() if step_of(c) < step_of(named) and has_training_state(c)]
        candidates = older + candidates
    chosen, passed_over = siblings.newest_sound(candidates)
    if chosen is None:
        raise InputError(f"{passed_over[0][1]}; no older checkpoint beside it matches its manifest")
    Checkpoints.read_state(chosen)
    return chosen, tuple(f"{c} skipped: {problem}" for c, problem in passed_over)


def resume_flag(help_text: str) -> bool:
    """A stage's --resume flag (True: a rerun resumes, or finds nothing to do; resume_or_refuse), with its help."""
    return field(default=True, metadata={"help": help_text})


def verify_flag() -> str | None:
    """A trainer's --verify_checkpoints flag: how its checkpoints and the model folders it loads are checked against
    their manifests (manifests.verify_mode)."""
    return field(
        default=None,
        metadata={
            "help": "How checkpoints and model folders with a manifest are checked before they are trusted: 'full' "
            "(sizes and SHA-256 digests, about 1 s per GB and process) or 'sizes' (sizes only, for huge models). "
            f"Default: {manifests.VERIFY_VARIABLE} if set, else full.",
            "choices": list(manifests.VERIFY_MODES),
        },
    )


def report_to_flag(help_text: str) -> str:
    """A stage's --report_to flag (none or a logger of TRACKER_PACKAGES; `trackers` checks it), with its help."""
    return field(default="none", metadata={"help": help_text, "choices": ["none", *TRACKER_PACKAGES]})


class LoopTimer:
    """Seconds and tokens of a training loop, for its tokens per second.

    step(tokens) at the end of each optimizer step, once the step's figures are read (so the device has
    finished it); tokens: a tensor of this process's counts so far (real, processed). Time inside
    paused() (saving checkpoints) is left out. The first optimizer step (kernel choice, memory warm-up)
    is also reported apart: the figures after it are the steady rate.
    """

    def __init__(self):
        self.started = time.perf_counter()
        self.paused_seconds = 0.0
        self.first_step = None  # (seconds into the loop, this process's tokens then)
        self.last_step_seconds = 0.0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started - self.paused_seconds

    def step(self, tokens: torch.Tensor) -> None:
        self.last_step_seconds = self.elapsed()
        if self.first_step is None:
            self.first_step = (self.last_step_seconds, tokens.detach().clone())

    @contextlib.contextmanager
    def paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.paused_seconds += time.perf_counter() - start

    def summary(self, accelerator: Accelerator, tokens: torch.Tensor, names: Sequence[str]) -> dict:
        """{seconds, <name>_tokens_per_second..., after_first_step: the same from the second step on}.

        tokens: this process's final counts, named by names; every process must call this (the counts are summed).
        """
        first_seconds, first_tokens = self.first_step or (0.0, torch.zeros_like(tokens))
        totals = accelerator.reduce(torch.stack([tokens, first_tokens.to(tokens.device)]).float(), reduction="sum")

        def rates(seconds, counts):
            figures = {"seconds": round(seconds, 3)}
            for name, count in zip(names, counts.tolist()):
                figures[f"{name}_tokens_per_second"] = round(count / seconds, 1) if seconds > 0 else None
            return figures

        return {
            **rates(self.last_step_seconds, totals[0]),
            "after_first_step": rates(self.last_step_seconds - first_seconds, totals[0] - totals[1]),
        }


def pad(sequences: Sequence[Sequence[int]], value: int | None, side: str = "right") -> torch.Tensor:
    """A (len(sequences), longest) long tensor: each sequence filled up with value on `side`."""
    width = max(len(s) for s in sequences)
    if value is None and any(len(s) != width for s in sequences):
        raise ValueError("sequences of different lengths need a pad value")
    out = torch.full((len(sequences), width), 0 if value is None else value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        if len(seq):
            if side == "left":
                out[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
            else:
                out[row, : len(seq)] = torch.as_tensor(list(seq), dtype=torch.long)
    return out


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int | None, side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) padded with pad_id on `side`; the mask is 0 on padding."""
    return pad(sequences, pad_id, side), pad([[1] * len(s) for s in sequences], 0, side)


def trackers(report_to: Sequence[str], stage: str, missing: str = "error") -> list[str]:
    """The loggers of --report_to (wandb, tensorboard) that are installed.

    missing="error": stop before anything loads (the message says what to install); "warn": go on
    without it (metrics still go to the stage's own log file).
    """
    wanted = [name for name in report_to if name not in ("none", "")]
    usable = [name for name in wanted if any(importlib.util.find_spec(p) for p in TRACKER_PACKAGES.get(name, ()))]
    unusable = [name for name in wanted if name not in usable]
    if unusable and missing == "error":
        sys.exit(
            f"error: --report_to {' '.join(unusable)} needs the '{unusable[0]}' package (pip install {unusable[0]}), "
            "or pass --report_to none"
        )
    if unusable:
        print(
            f"{stage}: not reporting to {sorted(unusable)} (not installed or not supported here); metrics still "
            "go to its log file",
            file=sys.stderr,
        )
    return usable
