"""LoRA through peft, for SFT, the verifier and RL (off unless --lora_r is given): the flags the three share, the
adapters put on a model, and the merged weights, computed beside the trained model without touching it.

- LoRAArguments: --lora_r (0: off), --lora_alpha, --lora_dropout, --lora_target_modules, --merge_lora.
- add_adapters: peft's get_peft_model on a loaded model, only linear layers adapted, and what is trained said.
- merged_state_dict: a PEFT model's (gathered) state dict as the plain model's, every adapter folded into its
  weight; save_model_folder (huatuo_o1/training.py) writes it as the Hugging Face folder every later stage loads,
  and the adapter alone in its ADAPTER_FOLDER.
- merged_parameters: the same weights one layer at a time (gathered one layer at a time under ZeRO-3), for the vLLM
  engine of RL_stage2.py --use_vllm.

Why not peft's merge_adapter / unmerge_adapter (what trl's vLLM sync calls): they add the adapter into the frozen
weights in place and subtract it again, which returns them only up to rounding (measured on a tiny Llama: every
adapted weight changed, by up to 7e-9 in float32 and 5e-4 in bfloat16, at every push). Folding into a copy leaves
the trained model exactly as it was.

peft is imported inside the functions: a run without --lora_r never imports it.
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from huatuo_o1 import cli
from huatuo_o1.records import InputError

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel

# checkpoint-<step>/adapter/ (and the same under a final model folder): the adapter alone, as peft saves it
ADAPTER_FOLDER = "adapter"
ADAPTER_NAME = "default"  # peft's name for the one adapter a model gets here
PEFT_PREFIX = "base_model.model."  # what a PEFT model's parameter names start with
ALL_LINEAR = "all-linear"  # peft's shorthand: every linear layer but the output layer


@dataclass
class LoRAArguments:
    """The LoRA flags of SFT_stage1.py, train_verifier.py and RL_stage2.py."""

    lora_r: int = field(
        default=0,
        metadata={
            "help": "Train LoRA adapters of this rank instead of every weight (peft); the base weights stay frozen. "
            "0 (default): off, every weight is trained (the paper's)."
        },
    )
    lora_alpha: float = field(
        default=None, metadata={"help": "LoRA's alpha: the adapter's output is scaled by alpha / r. Default: 2 x r."}
    )
    lora_dropout: float = field(
        default=0.05,
        metadata={"help": "Dropout on the adapters' input (RL turns every dropout off, this one too)."},
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: [ALL_LINEAR],
        metadata={
            "help": f"The linear layers to adapt, by name (e.g. q_proj v_proj), or {ALL_LINEAR}: every linear layer "
            "but the output layer (default)."
        },
    )
    merge_lora: bool = field(
        default=True,
        metadata={
            "help": f"With --lora_r: save each checkpoint (and the final model) as a Hugging Face folder with the "
            f"adapters merged into the weights, the folder every later stage loads, besides the adapter alone in "
            f"its {ADAPTER_FOLDER}/ sub-folder; False saves the adapter (and the tokenizer) only."
        },
    )

    def __post_init__(self):
        cli.check_ranges(self, at_least_0=("lora_r",), above_0=("lora_alpha",), shares=("lora_dropout",))
        if not self.lora_target_modules:
            raise InputError(f"--lora_target_modules needs at least one layer name (or {ALL_LINEAR})")

    @property
    def enabled(self) -> bool:
        return self.lora_r > 0

    def settings(self) -> dict | None:
        """What a resumed run must share with the run it continues (None when LoRA is off)."""
        if not self.enabled:
            return None
        return {
            "r": self.lora_r,
            "alpha": self.alpha,
            "dropout": self.lora_dropout,
            "target_modules": sorted(self.lora_target_modules),
        }

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2 * self.lora_r

    def peft_config(self, task_type: str, modules_to_save: list[str] | None = None) -> "LoraConfig":
        """peft's LoraConfig for these flags. task_type: "CAUSAL_LM" or "SEQ_CLS"; modules_to_save: layers trained in
        full beside the adapters (the verifier's classification head)."""
        from peft import LoraConfig

        targets = self.lora_target_modules
        return LoraConfig(
            r=self.lora_r,
            lora_alpha=self.alpha,
            lora_dropout=self.lora_dropout,
            target_modules=ALL_LINEAR if targets == [ALL_LINEAR] else list(targets),
            modules_to_save=modules_to_save,
            task_type=task_type,
        )


def is_peft_model(model: torch.nn.Module) -> bool:
    from accelerate.utils import is_peft_model as accelerate_is_peft_model

    return accelerate_is_peft_model(model)


def add_adapters(
    model: torch.nn.Module,
    lora: LoRAArguments,
    task_type: str,
    modules_to_save: list[str] | None = None,
    adapters_in_model_dtype: bool = False,
    say: Callable[[str], None] = print,
) -> "PeftModel":
    """The model with LoRA adapters (peft's get_peft_model): only they, and modules_to_save, are trained.

    adapters_in_model_dtype: keep the adapters in the model's dtype (bf16 under DeepSpeed: its ZeRO-3 gathers a
    module's parameters in one dtype) instead of peft's float32 adapters on a half-precision model.
    A target that is not a linear layer (an embedding, a convolution) is refused: the merged weights are
    computed for linear layers only (fold).
    """
    from peft import get_peft_model
    from peft.tuners.lora import Linear, LoraLayer

    try:
        peft_model = get_peft_model(
            model, lora.peft_config(task_type, modules_to_save), autocast_adapter_dtype=not adapters_in_model_dtype
        )
    except ValueError as error:  # a target module name the model does not have
        raise InputError(f"--lora_target_modules {' '.join(lora.lora_target_modules)}: {error}") from None
    for name, module in peft_model.named_modules():
        if isinstance(module, LoraLayer) and not isinstance(module, Linear):
            layer, kind = name.removeprefix(PEFT_PREFIX), type(module.get_base_layer()).__name__
            raise InputError(
                f"--lora_target_modules {' '.join(lora.lora_target_modules)}: {layer} is not a linear layer ({kind}); "
                "name linear layers only"
            )
    trained, total = peft_model.get_nb_trainable_parameters()
    say(
        f"LoRA r {lora.lora_r}, alpha {lora.alpha:g} on {', '.join(lora.lora_target_modules)}: {trained:,} trained "
        f"parameters of {total:,} ({100 * trained / total:.2f}%)"
    )
    return peft_model


def reference_of(policy: torch.nn.Module) -> contextlib.AbstractContextManager:
    """Inside this block a PEFT policy computes as the model it started from (its adapters off): PPO's reference,
    with no second copy of the weights."""
    return policy.disable_adapter()


# ---- merged weights -----------------------------------------------------------------------------


def plain_name(peft_name: str) -> str | None:
    """A PEFT model's parameter name as the plain model names it (None for what the merged model has no place for:
    the adapters themselves, a trained module's frozen original)."""
    if ".lora_" in peft_name or ".original_module." in peft_name:
        return None
    name = peft_name.removeprefix(PEFT_PREFIX).replace(".base_layer.", ".")
    return name.replace(f".modules_to_save.{ADAPTER_NAME}.", ".")


def fold(layer: torch.nn.Module, weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor) -> torch.Tensor:
    """A new tensor: a peft LoRA linear layer's frozen weight with its adapter added, W + scaling * B @ A (computed
    in float32, returned in W's dtype), exactly peft's get_delta_weight for a linear layer."""
    delta = lora_b.float() @ lora_a.float()
    if layer.fan_in_fan_out:
        delta = delta.T
    return (weight.float() + delta * layer.scaling[ADAPTER_NAME]).to(weight.dtype)


def lora_layers(peft_model: "PeftModel") -> dict[str, torch.nn.Module]:
    """{module name in the PEFT model: its LoRA linear layer}."""
    from peft.tuners.lora import Linear

    return {name: module for name, module in peft_model.named_modules() if isinstance(module, Linear)}


def merged_state_dict(peft_model: "PeftModel", state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft_model's full state dict (gathered under ZeRO-3: accelerate's get_state_dict) as the plain model's, with
    every adapter folded into its weight and every trained module (modules_to_save) in place of its original."""
    merged = {}
    layers = lora_layers(peft_model)
    for key, tensor in state_dict.items():
        name = plain_name(key)
        if name is None:
            continue
        layer_name = key.removesuffix(".base_layer.weight")
        if layer_name in layers:
            adapter = f".{ADAPTER_NAME}.weight"
            lora_a, lora_b = state_dict[f"{layer_name}.lora_A{adapter}"], state_dict[f"{layer_name}.lora_B{adapter}"]
            tensor = fold(layers[layer_name], tensor, lora_a, lora_b)
        merged[name] = tensor
    return merged


def merged_parameters(
    peft_model: "PeftModel",
    gathered: Callable[[list[torch.nn.Parameter]], contextlib.AbstractContextManager] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(plain name, merged tensor) for every parameter of peft_model, tied ones once: a LoRA layer's weight with its
    adapter folded in (a new tensor), any other parameter as it is (copied when gathered: the gather is released).

    gathered(params): a context in which those parameters are whole (DeepSpeed's GatheredParameters under ZeRO-3;
    None: they are); a LoRA layer's weight and adapter are gathered together, other parameters one at a time.
    Under ZeRO-3 every process must run through the whole generator (each gather is a collective)."""
    whole = gathered or (lambda parameters: contextlib.nullcontext())
    layers = lora_layers(peft_model)
    for key, parameter in peft_model.named_parameters():
        name = plain_name(key)
        if name is None:
            continue
        layer_name = key.removesuffix(".base_layer.weight")
        if layer_name in layers:
            layer = layers[layer_name]
            lora_a, lora_b = layer.lora_A[ADAPTER_NAME].weight, layer.lora_B[ADAPTER_NAME].weight
            with whole([parameter, lora_a, lora_b]):
                tensor = fold(layer, parameter.data, lora_a.data, lora_b.data)
        else:
            with whole([parameter]):
                tensor = parameter.data.detach().clone() if gathered else parameter.data
        yield name, tensor
