"""Planning figures for the paper's SFT and PPO on 8xA100-80GB nodes: memory per GPU and wall time, on paper.

Memory: ZeRO-3 model states from DeepSpeed's own estimator (the figures its
estimate_zero3_model_states_mem_needs_all_cold prints), frozen models and activations by the formulas
below, per training phase. With LoRA (--lora_r, the tables after the full ones): the base model frozen
in bf16, the estimator's states for the adapters only (r x (d_in + d_out) per adapted matrix). Time:
FLOPs / (MFU x peak x GPUs), bounded below by ZeRO-3's collectives, host transfers under CPU offload and
token-by-token decoding. The MFU is the one bench/gpu_check.py measured when
its file exists (bench_out/gpu/gpu_check.json), else ASSUMED_MFU; every other constant is a datasheet
figure, a fact of the paper's recipe or a stated assumption (a flag where a cluster differs). Every figure
printed is projected; only the MFU can be measured. docs/scaling.md explains each formula.

Usage:
    python bench/scaling_plan.py                    # the tables of docs/scaling.md (markdown)
    python bench/scaling_plan.py --mfu 0.4 --json_out plan.json --sft_tokens_per_row 1100
    python bench/scaling_plan.py --lora_r 64          # LoRA's tables at another rank (0: none)
"""

import contextlib
import io
import json
import math
import os
from dataclasses import asdict, dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from huatuo_o1 import cli
from huatuo_o1.records import read_json

with contextlib.redirect_stdout(io.StringIO()):  # DeepSpeed announces its accelerator on stdout when imported
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30

# ---- the hardware: A100-80GB SXM (datasheet), 8 per node ----------------------------------------------------
GPU_MEMORY = 80 * GIB  # 81,920 MiB as nvidia-smi reports it
PEAK_BF16 = 312e12  # dense bf16 FLOP/s
HBM_BYTES_PER_S = 2.039e12
GPUS_PER_NODE = 8
NODE_COUNTS = (1, 2, 4)
# A plan "fits" within 90% of the GPU: the CUDA context, NCCL's buffers and the allocator's fragmentation take
# the rest (assumed); "tight" up to 100%; beyond, out of memory.
FITS_SHARE = 0.9

# ---- the models (their published config.json files) -----------------------------------------------------------
LLAMA_3_1_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32)
LLAMA_3_1_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
LLAMA_3_2_3B = dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24)
LLAMA_3 = dict(vocab_size=128256, num_key_value_heads=8, head_dim=128)

# ---- the paper's recipe ---------------------------------------------------------------------------------------
SFT_ROWS = 19704  # the released medical-o1-reasoning-SFT, English
# tokens per row (assumed): the ~712-token answers of complex-CoT models (the paper) + ~160 question + ~28 template
SFT_TOKENS_PER_ROW = 900
SFT_BATCH, SFT_MICRO_BATCH, SFT_EPOCHS, SFT_MAX_SEQ_LEN = 128, 2, 3, 8192
PPO_EPISODES_PER_UPDATE, PPO_TOTAL_EPISODES, PPO_EPOCHS = 128, 20000, 3
PPO_RESPONSE_LENGTH, PPO_FORWARD_CHUNK = 1300, 8  # --response_length, --local_rollout_forward_batch_size
PPO_PROMPT_TOKENS = 200  # assumed: an open-ended exam question (~170) + the chat template
PPO_VERIFIER_TOKENS = 300  # assumed: the final response, the reference answer and the verifier's template
VLLM_GPU_MEMORY_UTILIZATION = 0.3  # RL_stage2.py's default
LORA_R = (
    16  # the rank of LoRA's tables: adapters on every linear layer of the decoder (--lora_target_modules all-linear)
)
# With gradient checkpointing a fully trained token costs 8 x P FLOPs (forward, recompute, backward's activation and
# weight gradients, 2 x P each but the backward's 4); with the base frozen the weight gradients go: 6 x P.
LORA_WORK = 6 / 8

# ---- assumptions about speed (flags) ----------------------------------------------------------------------------
# MFU counts 6 x parameters FLOPs per trained token (attention's own FLOPs not counted), as bench/gpu_check.py does.
# 0.30: with gradient checkpointing the GPU computes 8 x parameters per token for the 6 counted, so this is 40% of
# peak busy, a middle value for ZeRO-3 fine-tuning with micro-batches of about a thousand tokens.
ASSUMED_MFU = 0.30
INTRA_NODE_BUS_GBPS = 200  # NCCL all-gather / reduce-scatter over NVLink 3 (300 GB/s per direction)
INTER_NODE_BUS_GBPS = 100  # the same across nodes with 8 x 200 Gb/s InfiniBand per node (half of the line rate)
PCIE_GBPS = 20  # host <-> GPU, PCIe 4.0 x16 (32 GB/s line rate), for CPU offload
NODE_RAM_GIB = 1863  # 2 TB, a DGX A100's host memory
CPU_ADAM_PARAMS_PER_S = 2e9  # per node, DeepSpeed's CPU Adam under CPU offload
HF_DECODE_EFFICIENCY = 0.25  # share of HBM bandwidth a `generate` step reaches (eager PyTorch, batch <= 8)
VLLM_DECODE_EFFICIENCY = 0.5  # the same for vLLM with --vllm_enforce_eager True (RL_stage2.py's default)

CONFIGS = {"zero3": "configs/deepspeed_zero3.yaml", "offload": "configs/deepspeed_zero3_offload.yaml"}


@dataclass(frozen=True)
class Shape:
    """What the formulas need of a Llama model: parameter counts (DeepSpeed's terms) and layer sizes."""

    name: str
    params: int
    largest_layer: int  # the most parameters one module holds itself (DeepSpeed's model_to_params)
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_width: int  # key/value heads x head size
    vocab: int


def shape(name: str, sizes: dict, num_labels: int | None = None, tied: bool = False) -> Shape:
    """Count a model's parameters on the meta device (no weights): a causal LM, or a classifier with num_labels."""
    config = LlamaConfig(**LLAMA_3, **sizes, tie_word_embeddings=tied, num_labels=num_labels or 2)
    with torch.device("meta"):
        model = (LlamaForSequenceClassification if num_labels else LlamaForCausalLM)(config)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return Shape(
        name, model.num_parameters(), largest, config.hidden_size, config.num_hidden_layers,
        config.intermediate_size, config.num_attention_heads, config.num_key_value_heads * config.head_dim,
        config.vocab_size,
    )  # fmt: skip


# ---- memory -------------------------------------------------------------------------------------------------------
def model_states(model_params: int, largest_layer: int, nodes: int, offload: bool) -> tuple[int, int]:
    """(bytes per GPU, bytes per node of host memory) of a trained model's parameters, gradients and Adam states
    under ZeRO-3, from DeepSpeed's estimator (zero_init as our configs, its default 1.5 host buffer factor)."""
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
        total_params=model_params, largest_layer_params=largest_layer, num_gpus_per_node=GPUS_PER_NODE,
        num_nodes=nodes, cpu_offload=offload, cpu_offload_params=offload, zero_init=True,
    )  # fmt: skip
    return gpu, cpu


def lora_adapter(model: Shape, rank: int) -> tuple[int, int]:
    """(parameters, the largest adapter module's) of LoRA on every linear layer of a Llama decoder: r x (d_in + d_out)
    per matrix (A: r x d_in, B: d_out x r); per layer q and o (h -> h), k and v (h -> kv), gate and up (h -> I),
    down (I -> h): r x (9h + 2kv + 3I)."""
    per_layer = rank * (9 * model.hidden + 2 * model.kv_width + 3 * model.intermediate)
    return model.layers * per_layer, rank * max(model.hidden, model.intermediate)


def frozen_states(model: Shape, nodes: int, offload: bool) -> tuple[int, int]:
    """(bytes per GPU, bytes per node) of a frozen model under ZeRO-3 (the reference policy, the verifier): the
    estimator's terms without gradients and optimizer, bf16 weights sharded, its largest layer gathered whole."""
    if offload:
        return 2 * model.largest_layer, int(2 * model.params / nodes * 1.5)
    return 2 * model.largest_layer + 2 * model.params // (GPUS_PER_NODE * nodes), 0


def layer_activation_bytes(model: Shape) -> int:
    """Bytes per token one Llama decoder layer keeps for backward, bf16, SDPA or FlashAttention (no
    sequence x sequence matrix): each RMSNorm's fp32 input (4h) and bf16 output (2h, the next matmuls' input),
    query and key/value after RoPE (2h + 4 kv), the attention output (2h) and its log-sum-exp (4 per head),
    and the MLP's gate, up, SiLU(gate) and product (8 x intermediate)."""
    return 16 * model.hidden + 4 * model.kv_width + 8 * model.intermediate + 4 * model.heads


def activation_bytes(model: Shape, tokens: int, checkpointing: bool) -> int:
    """Activations of one micro-batch of tokens through the decoder layers. With gradient checkpointing (per
    layer, as transformers does it) each layer keeps only its bf16 input and one layer is recomputed at a time."""
    if checkpointing:
        return (model.layers * 2 * model.hidden + layer_activation_bytes(model)) * tokens
    return model.layers * layer_activation_bytes(model) * tokens


# Bytes per position per vocabulary entry around the output layer (from the code): SFT's loss keeps the fp32
# log-softmax for backward and meets its incoming and outgoing gradients at the backward's start (3 x 4); PPO's
# training step holds the bf16 logits beside that (+2); scoring a rollout holds the bf16 logits, their fp32 copy
# and the log-softmax (2 + 4 + 4).
LOGIT_BYTES = {"sft": 12, "ppo_train": 14, "ppo_score": 10}


def kv_bytes_per_token(model: Shape) -> int:
    return 2 * model.layers * model.kv_width * 2  # keys and values, bf16


def verdict(gpu_bytes: float) -> str:
    if gpu_bytes <= FITS_SHARE * GPU_MEMORY:
        return "fits"
    return "tight" if gpu_bytes <= GPU_MEMORY else "OOM"


def host_verdict(cpu_bytes: float, ram_gib: float) -> str:
    return "fits" if cpu_bytes <= FITS_SHARE * ram_gib * GIB else ("tight" if cpu_bytes <= ram_gib * GIB else "OOM")


# ---- time ---------------------------------------------------------------------------------------------------------
def collective_seconds(bytes_per_gpu: float, gpus: int, args) -> float:
    """A ring all-gather or reduce-scatter moving bytes_per_gpu (the whole tensor) among gpus GPUs."""
    if gpus == 1:
        return 0.0
    bus = (args.intra_node_bus_gbps if gpus <= GPUS_PER_NODE else args.inter_node_bus_gbps) * 1e9
    return bytes_per_gpu * (gpus - 1) / gpus / bus


def zero3_traffic_seconds(params: int, micro_batches: float, gpus: int, args, gradients: bool = True) -> float:
    """ZeRO-3's collectives over micro-batches on one GPU: the bf16 weights gathered for the forward, for the
    checkpointed recompute and for the backward, and the bf16 gradients reduce-scattered (ZeRO's 3 x parameters
    of traffic, plus the recompute's gather). gradients False: frozen weights (LoRA's base), gathered only."""
    return micro_batches * collective_seconds((4 if gradients else 3) * 2 * params, gpus, args)


def offload_seconds(trained_params: int, micro_batches: float, optimizer_steps: int, nodes: int, args):
    """(host-transfer seconds, CPU Adam seconds) under CPU offload on one GPU: its parameter shard copied to the GPU
    for each of the three gathers and its fp32 gradient shard back, per micro-batch; Adam on each node's shards."""
    shard = trained_params / (GPUS_PER_NODE * nodes)
    transfer = micro_batches * (3 * 2 + 4) * shard / (args.pcie_gbps * 1e9)
    return transfer, optimizer_steps * trained_params / nodes / args.cpu_adam_params_per_s


def decode_seconds(model: Shape, steps: int, sequences: int, context: float, efficiency: float) -> float:
    """Token-by-token sampling is bound by memory bandwidth: each step reads the weights and the sequences'
    keys and values (at their mean context length)."""
    per_step = 2 * model.params + sequences * context * kv_bytes_per_token(model)
    return steps * per_step / (HBM_BYTES_PER_S * efficiency)


# ---- the plans ----------------------------------------------------------------------------------------------------
def sft_plan(model: Shape, nodes: int, config: str, mfu: float, args, lora_r: int = 0) -> dict:
    """lora_r: the base frozen (bf16, sharded), the adapters trained (DeepSpeed's estimator over them)."""
    gpus, offload = GPUS_PER_NODE * nodes, config == "offload"
    trained = model.params
    states, host = model_states(model.params, model.largest_layer, nodes, offload)
    if lora_r:
        trained, largest_adapter = lora_adapter(model, lora_r)
        adapter_states, adapter_host = model_states(trained, largest_adapter, nodes, offload)
        base_states, base_host = frozen_states(model, nodes, offload)
        states, host = base_states + adapter_states, base_host + adapter_host
    logits = LOGIT_BYTES["sft"] * SFT_MAX_SEQ_LEN * model.vocab
    act = {ckpt: activation_bytes(model, SFT_MAX_SEQ_LEN, ckpt) + logits for ckpt in (True, False)}
    tokens = SFT_ROWS * args.sft_tokens_per_row
    micro_batches = SFT_ROWS / (SFT_MICRO_BATCH * gpus)  # per GPU per epoch; the batch of 128 kept
    steps = math.ceil(SFT_ROWS / SFT_BATCH)
    compute = 6 * model.params * tokens / (mfu * PEAK_BF16 * gpus) * (LORA_WORK if lora_r else 1)
    traffic = zero3_traffic_seconds(model.params, micro_batches, gpus, args, gradients=not lora_r)
    transfer, adam = offload_seconds(trained, micro_batches, steps, nodes, args) if offload else (0.0, 0.0)
    epoch = max(compute, traffic, transfer) + adam
    return {
        "model": model.name, "nodes": nodes, "gpus": gpus, "config": CONFIGS[config], "lora_r": lora_r,
        "trained_params": trained,
        "gradient_accumulation_steps": SFT_BATCH // (SFT_MICRO_BATCH * gpus),
        "model_states_gib": states / GIB, "host_gib_per_node": host / GIB,
        "activations_gib": act[True] / GIB, "activations_no_checkpointing_gib": act[False] / GIB,
        "logits_gib": logits / GIB, "total_gib": (states + act[True]) / GIB,
        "total_no_checkpointing_gib": (states + act[False]) / GIB,
        "verdict": verdict(states + act[True]), "verdict_no_checkpointing": verdict(states + act[False]),
        "host_verdict": host_verdict(host, args.node_ram_gib),
        "compute_s": compute, "zero3_traffic_s": traffic, "host_transfer_s": transfer, "cpu_adam_s": adam,
        "epoch_s": epoch, "gpu_hours_per_epoch": epoch * gpus / 3600, "run_s": SFT_EPOCHS * epoch,
    }  # fmt: skip


ROLLOUTS = {
    "gathered": "generate, policy gathered (default)",
    "sharded": "generate, sharded (--ds3_gather_for_generation False)",
    "vllm": "vLLM (--use_vllm True)",
}


def ppo_plan(setup: dict, nodes: int, config: str, mfu: float, args, lora_r: int = 0) -> dict:
    """One PPO update of the paper's batch: rollout (generate, score), then num_ppo_epochs of optimisation; the
    rollout's three ways side by side. lora_r: the policy trains adapters; its frozen base is also the reference
    (the frozen models stay a policy-sized model and the verifier: the reference's copy is gone, the policy's own
    weights took its place), the value model is trained in full."""
    policy, value, verifier = setup["policy"], setup["value"], setup["verifier"]
    gpus, offload = GPUS_PER_NODE * nodes, config == "offload"
    policy_trained, largest = policy.params, max(policy.largest_layer, value.largest_layer)
    if lora_r:
        policy_trained, largest_adapter = lora_adapter(policy, lora_r)
        largest = max(largest_adapter, value.largest_layer)
    trained = policy_trained + value.params  # one optimizer over the policy (or its adapters) and the value model
    states, host = model_states(trained, largest, nodes, offload)
    frozen = [frozen_states(m, nodes, offload) for m in (policy, verifier)]  # the reference (LoRA: the base)
    base = states + sum(gpu for gpu, _ in frozen)
    host += sum(cpu for _, cpu in frozen)
    episode = PPO_PROMPT_TOKENS + PPO_RESPONSE_LENGTH
    prompts = PPO_EPISODES_PER_UPDATE / gpus  # per GPU
    chunks = math.ceil(prompts / PPO_FORWARD_CHUNK)
    context = PPO_PROMPT_TOKENS + PPO_RESPONSE_LENGTH / 2

    def fetch_seconds(params: int) -> float:
        """Gathering params' bf16 weights on every GPU: the collective, and their shards' copy from host memory."""
        from_host = 2 * params / gpus / (args.pcie_gbps * 1e9) if offload else 0.0
        return max(collective_seconds(2 * params, gpus, args), from_host)

    kv_chunk = PPO_FORWARD_CHUNK * episode * kv_bytes_per_token(policy)
    hf_decode = decode_seconds(policy, PPO_RESPONSE_LENGTH, PPO_FORWARD_CHUNK, context, args.hf_decode_efficiency)
    module = policy.params + value.params + (policy_trained if lora_r else 0)  # the adapters ride along with LoRA
    rollouts = {
        # trl's unwrap_model_for_generation gathers the whole policy-and-value module for `generate`
        "gathered": {
            "gib": 0,
            "peak": 2 * module + kv_chunk,
            "generate_s": fetch_seconds(module) + chunks * hf_decode,
        },
        # every decoding step gathers the policy's layers one at a time
        "sharded": {
            "gib": 0,
            "peak": kv_chunk,
            "generate_s": chunks * (hf_decode + PPO_RESPONSE_LENGTH * fetch_seconds(policy.params)),
        },
    }
    # one engine per process holding the whole policy (no tensor parallelism), in its share of the GPU; about a
    # GiB of the engine's own activations (assumed) beside the weights and the keys and values
    engine = args.vllm_gpu_memory_utilization * GPU_MEMORY
    kv_room = engine - 2 * policy.params - GIB
    concurrent = kv_room / (kv_bytes_per_token(policy) * episode)
    rollouts["vllm"] = {"gib": engine, "peak": 0, "generate_s": math.inf}
    if concurrent >= 1:
        waves = math.ceil(prompts / concurrent)
        decode = decode_seconds(
            policy, PPO_RESPONSE_LENGTH, min(prompts, concurrent), context, args.vllm_decode_efficiency
        )
        rollouts["vllm"]["generate_s"] = fetch_seconds(policy.params) + waves * decode
    elif kv_room <= 0:
        rollouts["vllm"]["note"] = (
            f"its {engine / GIB:.0f} GiB cannot hold the {2 * policy.params / GIB:.0f} GiB policy"
        )
    else:
        rollouts["vllm"]["note"] = f"its {engine / GIB:.0f} GiB leave no room for one sequence's keys and values"

    score_peak = LOGIT_BYTES["ppo_score"] * PPO_FORWARD_CHUNK * (PPO_RESPONSE_LENGTH + 1) * policy.vocab
    train_peak = (
        activation_bytes(policy, episode, True) + activation_bytes(value, episode, True)
        + LOGIT_BYTES["ppo_train"] * (PPO_RESPONSE_LENGTH + 1) * policy.vocab
    )  # fmt: skip
    scoring_flops = PPO_EPISODES_PER_UPDATE * 2 * (
        episode * (2 * policy.params + value.params) + PPO_VERIFIER_TOKENS * verifier.params
    )  # fmt: skip
    score = max(
        scoring_flops / (mfu * PEAK_BF16 * gpus),
        chunks * fetch_seconds(2 * policy.params + value.params + verifier.params),
    )
    micro_batches = PPO_EPOCHS * prompts  # per GPU, --per_device_train_batch_size 1
    work = policy.params * (LORA_WORK if lora_r else 1) + value.params
    optimise_compute = PPO_EPOCHS * PPO_EPISODES_PER_UPDATE * 6 * episode * work / (mfu * PEAK_BF16 * gpus)
    traffic = zero3_traffic_seconds(trained, micro_batches, gpus, args)
    if lora_r:  # the frozen policy is gathered, never reduced; the adapters and the value model as before
        traffic += zero3_traffic_seconds(policy.params, micro_batches, gpus, args, gradients=False)
    transfer, adam = offload_seconds(trained, micro_batches, PPO_EPOCHS, nodes, args) if offload else (0.0, 0.0)
    optimise = max(optimise_compute, traffic, transfer) + adam
    updates = math.ceil(PPO_TOTAL_EPISODES / PPO_EPISODES_PER_UPDATE)
    host_room = host_verdict(host, args.node_ram_gib)
    for way in rollouts.values():
        way["total_gib"] = (base + way["gib"] + max(way["peak"], score_peak, train_peak)) / GIB
        way["verdict"] = "fails" if "note" in way else verdict(way["total_gib"] * GIB)
        if host_room == "OOM" and way["verdict"] != "fails":
            way["verdict"], way["note"] = "OOM", "host memory"
        way["update_s"] = way["generate_s"] + score + optimise
        way["run_s"] = updates * way["update_s"]
        way["generate_gib"] = way.pop("peak") / GIB
        way["engine_gib"] = way.pop("gib") / GIB
    return {
        "setup": setup["name"], "nodes": nodes, "gpus": gpus, "config": CONFIGS[config], "lora_r": lora_r,
        "trained_params": trained, "gradient_accumulation_steps": PPO_EPISODES_PER_UPDATE // gpus,
        "trained_states_gib": states / GIB, "frozen_gib": sum(gpu for gpu, _ in frozen) / GIB,
        "score_gib": score_peak / GIB, "optimise_gib": train_peak / GIB,
        "host_gib_per_node": host / GIB, "host_verdict": host_room,
        "score_s": score, "optimise_s": optimise, "updates": updates, "rollouts": rollouts,
    }  # fmt: skip


# ---- the MFU ------------------------------------------------------------------------------------------------------
GPU_CHECK_SFT_STEP = "sft_zero3"  # bench/gpu_check.py's step: ZeRO-3, bf16, padding-free batches


def measured_mfu(path: str) -> tuple[float, str] | None:
    """The MFU of bench/gpu_check.py's ZeRO-3 SFT step with padding-free batches (`steps.sft_zero3.mfu`, the
    configuration this plan projects), with where in the file it was; None when the step has none (not run, failed,
    or on CPU, where no MFU is computed)."""
    report = read_json(path)
    step = (report.get("steps") or {}).get(GPU_CHECK_SFT_STEP) or {}
    value = step.get("mfu")
    if isinstance(value, (int, float)) and 0 < value < 1:
        return float(value), f"{os.path.relpath(path, REPO_ROOT)}: steps.{GPU_CHECK_SFT_STEP}.mfu"
    return None


def choose_mfu(args) -> dict:
    if args.mfu is not None:
        return {"value": args.mfu, "source": "given", "detail": "--mfu"}
    if os.path.exists(args.gpu_check):
        measured = measured_mfu(args.gpu_check)
        if measured:
            return {"value": measured[0], "source": "measured", "detail": measured[1]}
        note = f"{args.gpu_check} holds no SFT MFU; "
    else:
        note = f"{os.path.relpath(args.gpu_check, REPO_ROOT)} not found (bench/gpu_check.py has not run); "
    return {"value": ASSUMED_MFU, "source": "assumed", "detail": note + "ASSUMED_MFU in this script"}


# ---- the tables ---------------------------------------------------------------------------------------------------
def duration(seconds: float) -> str:
    if math.isinf(seconds):
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def choices(plan: dict) -> list[dict]:
    """Per workload: the fewest nodes each config fits on, and the cheapest plan that fits (A100-hours)."""
    fitting = {}  # workload -> [(nodes, config, rollout, A100-hours)]
    for r in plan["sft"]:
        if "OOM" not in (r["verdict"], r["host_verdict"]):
            workload = f"SFT {r['model']}, {SFT_EPOCHS} epochs"
            fitting.setdefault(workload, []).append((r["nodes"], r["config"], "", r["run_s"] * r["gpus"] / 3600))
    for r in plan["ppo"]:
        for name, way in r["rollouts"].items():
            if way["verdict"] not in ("OOM", "fails"):
                option = (r["nodes"], r["config"], ROLLOUTS[name], way["run_s"] * r["gpus"] / 3600)
                fitting.setdefault(f"PPO {r['setup']}", []).append(option)
    workloads = [f"SFT {m['name']}, {SFT_EPOCHS} epochs" for m in plan["models"][:2]]
    workloads += [f"PPO {setup}" for setup in dict.fromkeys(r["setup"] for r in plan["ppo"])]
    rows = []
    for workload in workloads:
        options = fitting.get(workload, [])
        cheapest = min(options, key=lambda option: option[3], default=None)
        fewest = {path: min((o[0] for o in options if o[1] == path), default=None) for path in CONFIGS.values()}
        rows.append({
            "workload": workload,
            "fewest_nodes": fewest,
            "cheapest": cheapest and dict(zip(("nodes", "config", "rollout", "a100_hours"), cheapest)),
        })  # fmt: skip
    return rows


def table(title: str, columns: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table under a level-4 heading (docs/scaling.md nests them in its own sections)."""
    return [
        "", f"#### {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
        *("| " + " | ".join(map(str, cells)) + " |" for cells in rows),
    ]  # fmt: skip


def markdown(plan: dict) -> str:
    mfu, nodes = plan["mfu"], lambda r: f"{r['nodes']} x {GPUS_PER_NODE}"
    lines = [
        f"MFU {mfu['value']:.2f} ({mfu['source']}: {mfu['detail']}); A100-80GB, {PEAK_BF16 / 1e12:.0f} TFLOP/s "
        f"bf16 peak, {GPUS_PER_NODE} per node. Every figure below is projected (P); the MFU alone can be measured.",
        "",
        "Models: " + ", ".join(f"{m['name']} {m['params'] / 1e9:.2f}B parameters" for m in plan["models"]),
    ]
    lines += table(
        f"SFT, memory per GPU (GiB), micro-batch of {SFT_MAX_SEQ_LEN} tokens",
        ["model", "nodes x GPUs", "config", "model states (DeepSpeed)", "activations ckpt / no ckpt (logits incl.)",
         "total ckpt", "total no ckpt", "host RAM per node"],
        [[r["model"], nodes(r), f"`{r['config']}`", f"{r['model_states_gib']:.1f} P",
          f"{r['activations_gib']:.1f} / {r['activations_no_checkpointing_gib']:.1f} P (logits {r['logits_gib']:.1f})",
          f"{r['total_gib']:.1f} P **{r['verdict']}**",
          f"{r['total_no_checkpointing_gib']:.1f} P {r['verdict_no_checkpointing']}",
          f"{r['host_gib_per_node']:.0f} P {r['host_verdict']}"] for r in plan["sft"]],
    )  # fmt: skip
    lines += table(
        f"SFT, time ({SFT_ROWS:,} rows x {plan['inputs']['sft_tokens_per_row']} tokens, batch {SFT_BATCH}, "
        "gradient checkpointing)",
        ["model", "nodes x GPUs", "config", "accumulation", "compute", "ZeRO-3 traffic", "host transfer + CPU Adam",
         "per epoch", f"{SFT_EPOCHS} epochs", "A100-hours per epoch"],
        [[r["model"], nodes(r), f"`{r['config']}`", r["gradient_accumulation_steps"], f"{duration(r['compute_s'])} P",
          f"{duration(r['zero3_traffic_s'])} P",
          f"{duration(r['host_transfer_s'])} + {duration(r['cpu_adam_s'])} P" if r["cpu_adam_s"] else "-",
          f"{duration(r['epoch_s'])} P", f"{duration(r['run_s'])} P", f"{r['gpu_hours_per_epoch']:.1f} P"]
         for r in plan["sft"]],
    )  # fmt: skip

    def memory(way):
        return f"{way['total_gib']:.1f} P **{way['verdict']}**" + (f" ({way['note']})" if "note" in way else "")

    def timing(way, gpus):
        if way["verdict"] in ("OOM", "fails"):
            return way["verdict"]
        return (
            f"{duration(way['update_s'])} (generate {duration(way['generate_s'])}); {duration(way['run_s'])}, "
            f"{way['run_s'] * gpus / 3600:,.0f} A100-h P"
        )

    lines += table(
        f"PPO, memory per GPU (GiB): {PPO_EPISODES_PER_UPDATE} episodes per update, response_length "
        f"{PPO_RESPONSE_LENGTH}",
        ["policy + value + verifier", "nodes x GPUs", "config", "trained states", "frozen", "score / optimise peaks",
         *ROLLOUTS.values(), "host RAM per node"],
        [[r["setup"], nodes(r), f"`{r['config']}`", f"{r['trained_states_gib']:.1f} P", f"{r['frozen_gib']:.1f} P",
          f"{r['score_gib']:.1f} / {r['optimise_gib']:.1f} P", *map(memory, r["rollouts"].values()),
          f"{r['host_gib_per_node']:.0f} P {r['host_verdict']}"] for r in plan["ppo"]],
    )  # fmt: skip
    lines += table(
        f"PPO, time per update (generate + score + optimise) and per run of {plan['ppo'][0]['updates']} updates",
        ["policy + value + verifier", "nodes x GPUs", "config", "score + optimise", *ROLLOUTS.values()],
        [[r["setup"], nodes(r), f"`{r['config']}`", f"{duration(r['score_s'])} + {duration(r['optimise_s'])}",
          *(timing(way, r["gpus"]) for way in r["rollouts"].values())] for r in plan["ppo"]],
    )  # fmt: skip

    def cheapest(best):
        if best is None:
            return "none"
        rollout = f", {best['rollout']}" if best["rollout"] else ""
        return f"{best['nodes']} x {GPUS_PER_NODE}, `{best['config']}`{rollout}: {best['a100_hours']:,.0f} A100-h P"

    lines += lora_tables(plan)
    lines += table(
        "Which config, how many nodes",
        ["workload", *(f"fewest nodes, `{path}`" for path in CONFIGS.values()), "cheapest plan that fits"],
        [[row["workload"], *(f"{n} P" if n else "does not fit on 4" for n in row["fewest_nodes"].values()),
          cheapest(row["cheapest"])] for row in plan["choices"]],
    )  # fmt: skip
    return "\n".join(lines)


def lora_tables(plan: dict) -> list[str]:
    """LoRA beside full fine-tuning, ZeRO-3 without offload (nothing to offload once the base is frozen in bf16)."""
    if not plan["sft_lora"]:
        return []
    rank, nodes = plan["inputs"]["lora_r"], lambda r: f"{r['nodes']} x {GPUS_PER_NODE}"
    full_sft = {(r["model"], r["nodes"], r["config"]): r for r in plan["sft"]}
    full_ppo = {(r["setup"], r["nodes"], r["config"]): r for r in plan["ppo"]}

    def change(full, lora, verdicts=None):
        suffix = f" **{verdicts[0]} -> {verdicts[1]}**" if verdicts else ""
        return f"{full:.1f} -> {lora:.1f} P{suffix}"

    sft_rows = []
    for r in plan["sft_lora"]:
        f = full_sft[(r["model"], r["nodes"], r["config"])]
        sft_rows.append([
            r["model"], nodes(r), f"{r['trained_params'] / 1e6:,.0f}M",
            change(f["model_states_gib"], r["model_states_gib"]),
            change(f["total_gib"], r["total_gib"], (f["verdict"], r["verdict"])),
            f"{duration(f['epoch_s'])} -> {duration(r['epoch_s'])} P", f"{r['gpu_hours_per_epoch']:.1f} P",
        ])  # fmt: skip
    lines = table(
        f"SFT with LoRA r {rank} on every linear layer, `{CONFIGS['zero3']}`: full -> LoRA",
        ["model", "nodes x GPUs", "trained parameters", "model states (GiB)", "total ckpt (GiB)", "per epoch",
         "A100-hours per epoch"],
        sft_rows,
    )  # fmt: skip
    ppo_rows = []
    for r in plan["ppo_lora"]:
        f = full_ppo[(r["setup"], r["nodes"], r["config"])]
        ways = [
            change(full["total_gib"], way["total_gib"], (full["verdict"], way["verdict"]))
            for full, way in zip(f["rollouts"].values(), r["rollouts"].values())
        ]
        ppo_rows.append([
            r["setup"], nodes(r), f"{r['trained_params'] / 1e9:.2f}B",
            change(f["trained_states_gib"], r["trained_states_gib"]),
            *ways, f"{duration(f['optimise_s'])} -> {duration(r['optimise_s'])} P",
        ])  # fmt: skip
    lines += table(
        f"PPO with LoRA r {rank} on the policy (value model trained in full), `{CONFIGS['zero3']}`: full -> LoRA, "
        "memory per GPU (GiB)",
        ["policy + value + verifier", "nodes x GPUs", "trained parameters", "trained states", *ROLLOUTS.values(),
         "optimise per update"],
        ppo_rows,
    )  # fmt: skip
    return lines


def build_plan(args) -> dict:
    mfu = choose_mfu(args)
    llama_8b = shape("Llama-3.1-8B", LLAMA_3_1_8B)
    llama_70b = shape("Llama-3.1-70B", LLAMA_3_1_70B)
    value_3b = shape("3B value", LLAMA_3_2_3B, num_labels=1, tied=True)
    verifier_3b = shape("3B verifier", LLAMA_3_2_3B, num_labels=2, tied=True)
    value_70b = shape("70B value", LLAMA_3_1_70B, num_labels=1)
    verifier_70b = shape("70B verifier", LLAMA_3_1_70B, num_labels=2)
    setups = [
        {"name": "8B + 3B + 3B", "policy": llama_8b, "value": value_3b, "verifier": verifier_3b},
        {"name": "70B + 3B + 3B", "policy": llama_70b, "value": value_3b, "verifier": verifier_3b},
        {"name": "70B + 70B + 70B", "policy": llama_70b, "value": value_70b, "verifier": verifier_70b},
    ]
    sft = [
        sft_plan(model, nodes, config, mfu["value"], args)
        for model in (llama_8b, llama_70b)
        for config in CONFIGS
        for nodes in NODE_COUNTS
    ]
    ppo = [
        ppo_plan(setup, nodes, config, mfu["value"], args)
        for setup in setups
        for config in CONFIGS
        for nodes in NODE_COUNTS
    ]
    # LoRA: ZeRO-3 without offload (the frozen base in bf16 leaves little to offload)
    sft_lora = [
        sft_plan(model, nodes, "zero3", mfu["value"], args, args.lora_r)
        for model in (llama_8b, llama_70b)
        for nodes in NODE_COUNTS
        if args.lora_r
    ]
    ppo_lora = [
        ppo_plan(setup, nodes, "zero3", mfu["value"], args, args.lora_r)
        for setup in setups
        for nodes in NODE_COUNTS
        if args.lora_r
    ]
    models = [asdict(m) for m in (llama_8b, llama_70b, value_3b, verifier_3b, value_70b, verifier_70b)]
    inputs = {k: v for k, v in vars(args).items() if k not in ("json_out", "gpu_check")}
    plan = {"mfu": mfu, "inputs": inputs, "models": models, "sft": sft, "ppo": ppo, "sft_lora": sft_lora,
            "ppo_lora": ppo_lora}  # fmt: skip
    plan["choices"] = choices(plan)
    return plan


def main(argv=None):
    parser = cli.argument_parser(__doc__)
    parser.add_argument(
        "--gpu_check",
        default=os.path.join(REPO_ROOT, "bench_out", "gpu", "gpu_check.json"),
        help="bench/gpu_check.py's results: the SFT MFU it measured is used when present",
    )
    parser.add_argument("--mfu", type=float, help="use this MFU instead (0-1)")
    parser.add_argument(
        "--sft_tokens_per_row",
        type=int,
        default=SFT_TOKENS_PER_ROW,
        help="mean tokens of an SFT example (bench/sft_token_efficiency.py --data_path ... "
        "--model_path ... prints yours)",
    )
    parser.add_argument("--intra_node_bus_gbps", type=float, default=INTRA_NODE_BUS_GBPS)
    parser.add_argument("--inter_node_bus_gbps", type=float, default=INTER_NODE_BUS_GBPS)
    parser.add_argument("--pcie_gbps", type=float, default=PCIE_GBPS)
    parser.add_argument("--node_ram_gib", type=float, default=NODE_RAM_GIB)
    parser.add_argument("--cpu_adam_params_per_s", type=float, default=CPU_ADAM_PARAMS_PER_S)
    parser.add_argument("--hf_decode_efficiency", type=float, default=HF_DECODE_EFFICIENCY)
    parser.add_argument("--vllm_decode_efficiency", type=float, default=VLLM_DECODE_EFFICIENCY)
    parser.add_argument("--vllm_gpu_memory_utilization", type=float, default=VLLM_GPU_MEMORY_UTILIZATION)
    parser.add_argument(
        "--lora_r",
        type=int,
        default=LORA_R,
        help="the rank of the LoRA tables (adapters on every linear layer); 0: none",
    )
    parser.add_argument("--json_out", help="also write every figure and input here")
    args = parser.parse_args(argv)
    if args.mfu is not None and not 0 < args.mfu <= 1:
        parser.error(f"--mfu {args.mfu} is not a share: use a value in (0, 1]")
    plan = build_plan(args)
    print(markdown(plan))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(plan, f, indent=1)


if __name__ == "__main__":
    main()
