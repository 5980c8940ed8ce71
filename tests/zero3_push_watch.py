"""RL_stage2.py with every weight push into the vLLM engine watched (run by tests/test_vllm.py under ZeRO-3).

    accelerate launch --config_file ... tests/zero3_push_watch.py WATCH_DIR RL_stage2.py-flags...

runs RL_stage2.py's main() with those flags; each process writes WATCH_DIR/push_rank<rank>.json: per push, the
policy's parameter count, how many were streamed, and the largest number of partitioned parameters (ZeRO-3 shards,
not the small ones DeepSpeed keeps whole on every rank) that were gathered at the same time.
"""

import json
import os
import runpy
import sys

import huatuo_o1.rl.vllm_rollout as vllm_rollout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pushes = []
streamed_by_the_trainer = vllm_rollout.named_policy_tensors


def gathered_shards(params):
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    return [p for p in params if not p.ds_persist and p.ds_status == ZeroParamStatus.AVAILABLE]


def watched(policy, zero3=False):
    params = list(policy.parameters())
    push = {"zero3": zero3, "parameters": len(params), "partitioned": 0, "streamed": 0, "most_gathered": 0}
    if zero3:
        push["partitioned"] = sum(not p.ds_persist for p in params)
    for name, tensor in streamed_by_the_trainer(policy, zero3):
        if zero3:
            push["most_gathered"] = max(push["most_gathered"], len(gathered_shards(params)))
        push["streamed"] += 1
        yield name, tensor
    pushes.append(push)


def main():
    watch_dir, argv = sys.argv[1], sys.argv[2:]
    vllm_rollout.named_policy_tensors = watched
    stage = runpy.run_path(os.path.join(REPO, "RL_stage2.py"), run_name="rl_stage2")
    try:
        stage["main"](argv)
    finally:
        with open(os.path.join(watch_dir, f"push_rank{os.environ.get('RANK', '0')}.json"), "w") as f:
            json.dump(pushes, f)


if __name__ == "__main__":
    main()
