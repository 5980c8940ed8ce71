"""requirements.txt's lower bounds hold: every package has one, the versions installed here (constraints.txt's,
what the suite runs) meet it, and none is below what the code calls need or what the other packages there require
at their own lowest allowed release."""

import importlib.metadata
import os

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What our code calls that a release brought: (package, the release, what, a file that calls it, the call as written
# there). The file must still hold the call, so that a row whose reason is gone fails instead of lingering.
CALLS = [
    (
        "transformers",
        "4.56",
        "from_pretrained(dtype=...): older releases name the argument torch_dtype",
        "huatuo_o1/rl/value_model.py",
        "from_pretrained(base, dtype=",
    ),
    (
        "transformers",
        "5.0",
        "TrainingArguments.warmup_steps below 1 read as a share of the steps (RLOO / GRPO's --warmup_ratio)",
        "huatuo_o1/rl/trl_algorithms.py",
        '"warmup_steps",',
    ),
    (
        "peft",
        "0.12",
        "get_peft_model(autocast_adapter_dtype=...): LoRA adapters kept in the model's dtype under DeepSpeed",
        "huatuo_o1/lora.py",
        "autocast_adapter_dtype=",
    ),
    (
        "trl",
        "0.28",
        "trl.generation.vllm_generation, whose weight sync the CPU route of --use_vllm replaces",
        "huatuo_o1/rl/vllm_rollout.py",
        "from trl.generation import vllm_generation",
    ),
    (
        "trl",
        "1.16",
        "the private trainer steps DAPO's dynamic sampling wraps, as trl 1.16 has them (tests/test_rl_dapo.py)",
        "huatuo_o1/rl/dynamic_sampling.py",
        "_generate_and_score_completions",
    ),
]


def requirements():
    """{name: Requirement} of requirements.txt."""
    with open(os.path.join(REPO, "requirements.txt"), encoding="utf-8") as f:
        lines = [line.split("#")[0].strip() for line in f]
    parsed = [Requirement(line) for line in lines if line]
    return {requirement.name: requirement for requirement in parsed}


def lower_bound(requirement):
    (bound,) = [Version(spec.version) for spec in requirement.specifier if spec.operator == ">="]
    return bound


def test_every_requirement_has_a_lower_bound_the_tested_versions_meet():
    for name, requirement in requirements().items():
        assert lower_bound(requirement), name
        installed = importlib.metadata.version(name)
        assert requirement.specifier.contains(installed, prereleases=True), (name, installed, str(requirement))


@pytest.mark.parametrize("package, release, what, path, call", CALLS, ids=[f"{row[0]}>={row[1]}" for row in CALLS])
def test_lower_bounds_cover_what_the_code_calls(package, release, what, path, call):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        assert call in f.read(), f"{path} no longer holds {call!r}: drop or update this row"
    assert lower_bound(requirements()[package]) >= Version(release), what


def test_lower_bounds_cover_what_the_other_requirements_need():
    """A package here that requires another one here (its release installed, which is our lower bound for the ones
    whose calls we depend on most) may not require more of it than our bound allows."""
    ours = requirements()
    too_low = []
    for name, requirement in ours.items():
        extras = requirement.extras or {""}
        for needed in map(Requirement, importlib.metadata.requires(name) or []):
            if needed.name not in ours or (
                needed.marker and not any(needed.marker.evaluate({"extra": extra}) for extra in extras)
            ):
                continue
            floors = [Version(spec.version) for spec in needed.specifier if spec.operator in (">=", "==", "~=")]
            if floors and lower_bound(ours[needed.name]) < max(floors):
                too_low.append(f"{needed.name}: ours {ours[needed.name].specifier}, {name} needs {needed.specifier}")
    assert too_low == []
