"""DAPO's dynamic sampling for trl's GRPO and RLOO trainers (RL_stage2.py --dynamic_sampling).

A group (the num_generations responses to one prompt) whose rewards are all equal has no advantage to learn from,
yet it fills a place in the batch. Dynamic sampling drops such groups and refills the batch with groups of newly
drawn prompts, so that every update trains on a full batch of groups that tell something apart.

trl 1.16 has no such option, and no public hook between scoring a batch and training on it. `with_dynamic_sampling`
subclasses a trainer at `_generate_and_score_completions` (trl's step that samples, scores and computes the
advantages of one generation batch; underscored, but the one place where a batch is whole) and at
`_calculate_rewards` (to read the scores it gathered): it calls trl's own method, keeps the groups whose scores
differ, and calls it again on newly drawn prompts until the batch is full, at most MAX_SAMPLING_ROUNDS times; no trl
code is copied. Each round's advantages are trl's own, computed within that round.
"""

import numpy as np
import torch
from torch import Tensor

# Sampling rounds per update at most (the first and the refills): when most groups keep being equal, the batch is
# completed with dropped groups (logged) rather than sampling without bound.
MAX_SAMPLING_ROUNDS = 4


def equal_reward_groups(scores: Tensor, group_size: int) -> Tensor:
    """(groups,) True where every score of the group is the same; scores (groups x group_size,), in group order."""
    grouped = scores.view(-1, group_size)
    return (grouped == grouped[:, :1]).all(dim=1)


def take_rows(batch: dict, rows: Tensor) -> dict:
    """The rows (a bool mask over the batch's first dimension) of every per-row entry; other entries as they are."""
    taken = {}
    for key, value in batch.items():
        if torch.is_tensor(value) and value.dim() >= 1:
            taken[key] = value[rows.to(value.device)]
        elif isinstance(value, list):
            taken[key] = [item for item, keep in zip(value, rows.tolist()) if keep]
        else:
            taken[key] = value
    return taken


def join_rows(batches: list[dict], pad_token_id: int) -> dict:
    """The batches' rows one after the other. Per-token entries of different widths are padded: prompt_* on the
    left (prompts are left-padded), the others on the right; token ids with pad_token_id, everything else (masks,
    log-probs) with 0. Entries that are not per row (a token count) are taken from the first batch."""
    joined = {}
    for key, first in batches[0].items():
        values = [batch[key] for batch in batches]
        if isinstance(first, list):
            joined[key] = [item for value in values for item in value]
        elif not torch.is_tensor(first) or first.dim() == 0:
            joined[key] = first
        elif first.dim() == 1:
            joined[key] = torch.cat(values)
        else:
            width = max(value.shape[1] for value in values)
            fill = pad_token_id if key.endswith("_ids") else 0
            left = key.startswith("prompt_")
            padded = []
            for value in values:
                extra = width - value.shape[1]
                padded.append(torch.nn.functional.pad(value, (extra, 0) if left else (0, extra), value=fill))
            joined[key] = torch.cat(padded)
    return joined


def refill_indices(num_items: int, groups: int, seed: int, step: int, round_index: int) -> list[int]:
    """Which train items the refill of (step, round) draws: a seeded permutation, repeated when groups > num_items.
    Every process draws the same list (and takes its own share), so a refill's prompts differ between processes."""
    order = np.random.default_rng([seed, step, round_index]).permutation(num_items)
    return np.resize(order, groups).tolist()


def with_dynamic_sampling(trainer_cls: type) -> type:
    """trainer_cls (trl's GRPOTrainer or RLOOTrainer) with dynamic sampling in training; evaluation unchanged.

    `sampling_totals` counts, over the run, the groups drawn and dropped, the sampling rounds and the updates whose
    batch had to be completed with dropped groups. Per update trl logs dynamic_sampling/dropped_share (dropped /
    drawn groups, all processes), dynamic_sampling/rounds and dynamic_sampling/completed_with_dropped (the share of
    the batch that are dropped groups, 0 when it was filled).
    """

    class DynamicSampling(trainer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.latest_scores = None
            self.sampling_totals = {"groups_drawn": 0, "groups_dropped": 0, "rounds": 0, "updates": 0,
                                    "updates_completed_with_dropped": 0}  # fmt: skip

        def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
            rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
            # the score trl turns into advantages: the weighted sum of the reward functions, all processes' rows
            weights = self.reward_weights.to(rewards_per_func.device)
            self.latest_scores = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
            return rewards_per_func

        def _generate_and_score_completions(self, inputs):
            if not self.model.training:
                return super()._generate_and_score_completions(inputs)
            group_size, wanted = self.num_generations, len(inputs)
            device, process = self.accelerator.device, self.accelerator.process_index
            kept, dropped = [], []
            drawn_groups = dropped_groups = kept_rows = 0
            round_inputs = inputs
            for round_index in range(MAX_SAMPLING_ROUNDS):
                batch = super()._generate_and_score_completions(round_inputs)
                scores = self.latest_scores[process * wanted : (process + 1) * wanted]
                equal_rows = equal_reward_groups(scores, group_size).repeat_interleave(group_size)
                kept.append(take_rows(batch, ~equal_rows))
                dropped.append(take_rows(batch, equal_rows))
                kept_rows += int((~equal_rows).sum())
                counts = torch.tensor([len(equal_rows), int(equal_rows.sum()), max(0, wanted - kept_rows)],
                                      device=device)  # fmt: skip
                counts = self.accelerator.gather(counts.unsqueeze(0))  # (processes, 3)
                drawn_groups += int(counts[:, 0].sum()) // group_size
                dropped_groups += int(counts[:, 1].sum()) // group_size
                # every process samples as long as one is short: trl gathers the scores across processes
                if int(counts[:, 2].max()) == 0 or round_index == MAX_SAMPLING_ROUNDS - 1:
                    break
                round_inputs = self.refill_inputs(wanted, round_index + 1)
            rows = join_rows(kept + dropped, self.processing_class.pad_token_id)
            batch = take_rows(rows, torch.arange(len(rows["advantages"])) < wanted)
            if "num_items_in_batch" in batch:  # (GRPO) the tokens the loss is normalised by, all processes
                loss_mask = batch["completion_mask"] * batch.get("tool_mask", 1)
                batch["num_items_in_batch"] = self.accelerator.gather(loss_mask.sum()).sum()
            completed = max(0, wanted - kept_rows) / wanted
            completed = float(self.accelerator.gather(torch.tensor([completed], device=device)).mean())
            self.record_round(drawn_groups, dropped_groups, round_index + 1, completed)
            return batch

        def refill_inputs(self, rows: int, round_index: int) -> list[dict]:
            """This process's share of newly drawn prompts, each repeated group_size times (in group order)."""
            groups = rows // self.num_generations
            processes, process = self.accelerator.num_processes, self.accelerator.process_index
            indices = refill_indices(len(self.train_dataset), groups * processes, self.args.seed,
                                     self.state.global_step, round_index)  # fmt: skip
            mine = indices[process * groups : (process + 1) * groups]
            return [self.train_dataset[index] for index in mine for _ in range(self.num_generations)]

        def record_round(self, drawn: int, dropped: int, rounds: int, completed: float) -> None:
            totals = self.sampling_totals
            totals["groups_drawn"] += drawn
            totals["groups_dropped"] += dropped
            totals["rounds"] += rounds
            totals["updates"] += 1
            totals["updates_completed_with_dropped"] += completed > 0
            metrics = self._metrics["train"]  # trl averages these over the logging interval
            metrics["dynamic_sampling/dropped_share"].append(dropped / drawn)
            metrics["dynamic_sampling/rounds"].append(float(rounds))
            metrics["dynamic_sampling/completed_with_dropped"].append(completed)

    DynamicSampling.__name__ = DynamicSampling.__qualname__ = f"DynamicSampling{trainer_cls.__name__}"
    return DynamicSampling


def sampling_summary(totals: dict) -> dict:
    """What rl_summary.json reports of a run's dynamic sampling."""
    drawn = max(1, totals["groups_drawn"])
    return dict(totals, dropped_share=round(totals["groups_dropped"] / drawn, 4))
