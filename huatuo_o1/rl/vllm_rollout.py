"""Rollouts through vLLM (RL_stage2.py --use_vllm): one engine inside each training process, fed the policy's weights.

This is the colocated design of trl's GRPO (`vllm_mode="colocate"`): every training process owns a
vLLM engine that samples for its own prompts; after every update (before the next rollout) the policy's
weights are streamed into the engine, one parameter at a time (under ZeRO-3 each parameter is gathered alone,
never the whole model). vLLM only samples token ids: prompts go in as the token ids the `generate`
path uses, and log-probs, values and rewards are recomputed by the training models exactly as on
that path, so the PPO math does not depend on the engine.

Weight push. On a GPU we use trl's route (the engine model's `load_weights`, parameter by
parameter). On the CPU backend that fails ("'Parameter' object has no attribute 'weight_loader'":
vLLM repacks linear weights for its CPU kernels after loading), so there the pairs stream through
the model runner's `reload_weights`, which reloads layer by layer and repacks. One gap remains on
CPU: a tied output layer (lm_head sharing the embedding matrix, e.g. SmolLM2) receives no weight of
its own, so its repacked copy would keep the old embedding; `refresh_tied_output_layer` repacks it.

The engine runs in the calling process (VLLM_ENABLE_V1_MULTIPROCESSING=0, set before vLLM reads
it): its model is reachable for the push, and no worker process is spawned.

A LoRA policy (--lora_r) pushes its merged weights, each adapted layer folded into a new tensor as it streams
(huatuo_o1/lora.py's merged_parameters): the trained adapters and the frozen weights stay as they are. For RLOO /
GRPO, trl's own iterator (which merges the adapters into the weights in place and subtracts them again, leaving
rounding behind) is replaced by the same one (trl_pushes_merged_lora).
"""

import contextlib
import copy
import os
import tempfile
import time

import torch

from huatuo_o1 import lora
from huatuo_o1.records import InputError
from huatuo_o1.serving import free_port

GIB = 1 << 30


def use_vllm_in_this_process():
    """vLLM reads this when its engine starts: run the engine core here, not in a worker process."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"


def model_runner(llm):
    """The in-process model runner of a vllm.LLM (uniprocess or external-launcher executor)."""
    return llm.llm_engine.model_executor.driver_worker.worker.model_runner


def shutdown_engine(llm):
    """Stop an in-process engine once training is over: after the last collective call (vLLM's teardown destroys
    the process groups, the launcher's default group included), before accelerate's end_training destroys them
    (left to the interpreter's exit, the teardown found its groups gone: "Invalid process group specified")."""
    llm.llm_engine.engine_core.shutdown()


def refresh_tied_output_layer(model):
    """CPU: repack an lm_head that shares the embedding matrix after the embedding was reloaded.

    vLLM's CPU backend computes the output layer from a packed copy of its weight made when the
    weight was loaded; a tied lm_head gets no weight of its own during a reload (vLLM logs
    "ParallelLMHead: Failed to load weights") and would keep sampling from the old embedding.
    """
    lm_head = getattr(model, "lm_head", None)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    if lm_head is None or embed is None or getattr(lm_head, "weight", None) is None:
        return False
    if lm_head.weight.data_ptr() != embed.weight.data_ptr():
        return False
    lm_head.quant_method.process_weights_after_loading(lm_head)
    return True


def push_weights(llm, named_tensors):
    """Stream (Hugging Face parameter name, tensor) pairs into the engine; returns the seconds it took.

    The pairs are consumed one at a time (a generator that gathers each parameter is fine).
    """
    start = time.time()
    runner = model_runner(llm)
    if torch.cuda.is_available():
        model = runner.model  # trl's route on GPUs
        for name, tensor in named_tensors:
            model.load_weights([(name, tensor)])
    else:
        runner.reload_weights(weights_iterator=iter(named_tensors))
        refresh_tied_output_layer(runner.get_model())
    llm.reset_prefix_cache()  # cached prompt states were computed with the old weights
    return time.time() - start


def named_policy_tensors(policy, zero3=False):
    """(name, tensor) for each parameter of the policy, tied ones once; under ZeRO-3 gathered one at a time. A LoRA
    policy's are its merged weights, under the plain model's names (lora.merged_parameters).

    Every process must run through the whole generator under ZeRO-3 (each gather is a collective).
    The gathered tensor is copied before the parameter is released: vLLM's reload keeps a layer's
    tensors until the layer is complete.
    """
    if lora.is_peft_model(policy):
        yield from lora.merged_parameters(policy, gathered_parameters if zero3 else None)
        return
    if not zero3:
        for name, param in policy.named_parameters():
            yield name, param.data
        return
    import deepspeed

    for name, param in policy.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            yield name, param.data.detach().clone()


def gathered_parameters(parameters):
    """DeepSpeed ZeRO-3: the parameters whole inside the block (a collective: every process enters)."""
    import deepspeed

    return deepspeed.zero.GatheredParameters(parameters)


def engine_model_folder(policy, folder):
    """A folder holding only the policy's config (vocabulary size after any resize included; a LoRA policy's is
    the plain model's).

    The engine builds its model from it with placeholder weights, then receives the real weights
    from the policy: it never reads a checkpoint, so it starts from exactly the weights being trained.
    """
    plain = policy.get_base_model() if lora.is_peft_model(policy) else policy
    config = copy.deepcopy(plain.config)
    config.architectures = [type(plain).__name__]
    config.save_pretrained(folder)
    return folder


class VLLMRollout:
    """A colocated vLLM engine that samples responses as the `generate` path of the PPO trainer does."""

    def __init__(
        self,
        policy,
        *,
        response_length,
        temperature,
        stop_token_id,
        max_model_len,
        seed,
        gpu_memory_utilization=0.3,
        kv_cache_gib=1,
        enforce_eager=True,
        zero3=False,
        world_size=1,
    ):
        use_vllm_in_this_process()
        from vllm import LLM

        self.response_length, self.temperature, self.stop_token_id = response_length, temperature, stop_token_id
        self.zero3 = zero3
        self.version = None  # which policy version the engine holds (None: placeholder weights)
        engine_args = dict(
            load_format="dummy",
            skip_tokenizer_init=True,
            generation_config="vllm",  # no sampling defaults from the model folder: only what we pass
            dtype=policy.dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            gpu_memory_utilization=gpu_memory_utilization,
        )
        if not torch.cuda.is_available():
            # On CPU, gpu_memory_utilization is a share of the machine's RAM and, without an explicit size, the
            # KV cache takes that share minus what the process uses: far too much next to training.
            engine_args["kv_cache_memory_bytes"] = int(kv_cache_gib * GIB)
        if world_size > 1:
            # One engine per training process, each on its own prompts, inside the launcher's process group (as trl).
            engine_args["distributed_executor_backend"] = "external_launcher"
        with tempfile.TemporaryDirectory(prefix="vllm_policy_config_") as folder:
            self.llm = LLM(model=engine_model_folder(policy, folder), **engine_args)

    def sync(self, policy, version):
        """Push the policy's weights unless the engine already holds this version; returns seconds spent."""
        if self.version == version:
            return 0.0
        seconds = push_weights(self.llm, named_policy_tensors(policy, self.zero3))
        self.version = version
        return seconds

    def sampling_params(self, greedy):
        from vllm import SamplingParams

        return SamplingParams(
            n=1,
            max_tokens=self.response_length,
            detokenize=False,
            # pure temperature sampling, as the generate path: no top-k, no top-p
            temperature=0.0 if greedy else self.temperature,
            top_k=0,
            top_p=1.0,
            # the stop token alone ends a response: vLLM would also stop at the eos ids of the model's generation
            # config (read even with generation_config="vllm"), which --stop_token none / --stop_token_id exclude
            stop_token_ids=None if self.stop_token_id is None else [self.stop_token_id],
            ignore_eos=True,
        )

    def generate(self, prompts, greedy=False):
        """Token ids of one response per prompt (lists of prompt token ids), the stop token included when sampled."""
        outputs = self.llm.generate(
            [{"prompt_token_ids": list(prompt)} for prompt in prompts], self.sampling_params(greedy), use_tqdm=False
        )
        return [list(out.outputs[0].token_ids) for out in outputs]

    def responses(self, policy, version, prompts, pad_id, greedy=False):
        """(batch, longest response) tensor padded with pad_id after each response: what generate_responses returns."""
        self.sync(policy, version)
        sequences = self.generate(prompts, greedy=greedy)
        width = max(1, max(len(sequence) for sequence in sequences))
        out = torch.full((len(sequences), width), pad_id, dtype=torch.long)
        for row, seq in enumerate(sequences):
            out[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return out


def engine_for_ppo(config, trainer, prompts):
    """The engine of our PPO trainer with --use_vllm: the trainer's sampling settings, sized for the longest prompt
    plus --response_length."""
    accelerator = trainer.accelerator
    plugin = accelerator.state.deepspeed_plugin
    return VLLMRollout(
        accelerator.unwrap_model(trainer.model).policy,
        response_length=config.response_length,
        temperature=trainer.temperature,  # the value the generate path samples with
        stop_token_id=trainer.stop_token_id,
        max_model_len=max(len(prompt) for prompt in prompts) + config.response_length,
        seed=config.seed + accelerator.process_index,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        kv_cache_gib=config.vllm_kv_cache_gib,
        enforce_eager=config.vllm_enforce_eager,
        zero3=plugin is not None and plugin.zero_stage == 3,
        world_size=accelerator.num_processes,
    )


# ---- trl's colocated vLLM (GRPO / RLOO) on CPU ------------------------------------------------------
def trl_vllm_arguments(config, policy, prompts):
    """GRPOConfig / RLOOConfig fields for trl's colocated vLLM ({} without --use_vllm); in one process, also a
    rendezvous port of its own for trl's engine (MASTER_PORT)."""
    if not config.use_vllm:
        return {}
    from transformers import AutoConfig

    if policy.config.vocab_size != AutoConfig.from_pretrained(policy.name_or_path).vocab_size:
        # trl's engine loads the checkpoint from disk, whose vocabulary lacks the pad token added here
        raise InputError(
            f"--use_vllm with --rl_algorithm {config.rl_algorithm}: the policy's vocabulary grew by a new pad "
            "token, so its checkpoint no longer fits trl's vLLM engine; give the tokenizer a pad token "
            "distinct from eos (or use PPO, whose engine takes the resized policy)"
        )
    if "MASTER_PORT" not in os.environ:  # one process, not started by a launcher
        # trl's colocated engine sets up torch.distributed even in one process, on port 29500 whenever that port is
        # free at that moment: two runs starting together on one machine both took it ("address already in use").
        os.environ["MASTER_PORT"] = str(free_port())
    return dict(
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        vllm_max_model_length=max(len(prompt) for prompt in prompts) + config.response_length,
    )


@contextlib.contextmanager
def trl_colocate_on_cpu(kv_cache_gib, enforce_eager=True, dtype=None):
    """While trl's trainer is built and trained without CUDA: its engine gets a KV-cache size, the policy's dtype
    (vLLM's "auto" would run a float32 checkpoint in half precision) and, for weight sync, the reload route above
    instead of `load_weights` (which fails on vLLM's CPU backend).

    On GPUs nothing is changed: trl's own, tested route is used.
    """
    if torch.cuda.is_available():
        yield
        return
    use_vllm_in_this_process()
    from trl.generation import vllm_generation

    real_llm, real_sync = vllm_generation.LLM, vllm_generation.VLLMGeneration.sync_weights

    def llm_on_cpu(*args, **kwargs):
        kwargs["kv_cache_memory_bytes"] = int(kv_cache_gib * GIB)
        kwargs.setdefault("enforce_eager", enforce_eager)
        if dtype is not None:
            kwargs.setdefault("dtype", dtype)
        return real_llm(*args, **kwargs)

    def sync_weights_on_cpu(self):
        if self.mode != "colocate":
            return real_sync(self)
        # trl's own iterator: gathers each parameter alone under ZeRO-3, names as vLLM expects. Copied because the
        # reload keeps a layer's tensors until the layer is complete (the gather is released at each step).
        push_weights(self.llm, ((name, tensor.detach().clone()) for name, tensor in self._iter_named_params()))

    vllm_generation.LLM, vllm_generation.VLLMGeneration.sync_weights = llm_on_cpu, sync_weights_on_cpu
    try:
        yield
    finally:
        vllm_generation.LLM, vllm_generation.VLLMGeneration.sync_weights = real_llm, real_sync


@contextlib.contextmanager
def trl_pushes_merged_lora():
    """While trl's RLOO / GRPO with LoRA is built and trained with --use_vllm (CPU or GPU): its weight sync streams the
    merged weights of lora.merged_parameters, gathered one layer at a time under ZeRO-3, instead of trl's merge of
    the adapters into the frozen weights in place (gathered all at once) and its unmerge after."""
    from trl.generation import vllm_generation

    real_iterator = vllm_generation.VLLMGeneration._iter_named_params

    def merged(self):
        if not lora.is_peft_model(self.model):
            yield from real_iterator(self)
            return
        yield from lora.merged_parameters(self.model, self._dist.gather_params if self._dist.is_zero3 else None)

    vllm_generation.VLLMGeneration._iter_named_params = merged
    try:
        yield
    finally:
        vllm_generation.VLLMGeneration._iter_named_params = real_iterator
