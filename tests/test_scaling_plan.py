"""bench/scaling_plan.py: its figures follow from its inputs (DeepSpeed's estimator, the MFU, the memory budget)."""

import contextlib
import io
import json
import re

import pytest
import torch

from tests.scripts import run_ok

GIB = 2**30
PUBLISHED_PARAMS = {"Llama-3.1-8B": 8_030_261_248, "Llama-3.1-70B": 70_553_706_496}


def plan(tmp_path, *flags):
    out = tmp_path / f"plan_{len(list(tmp_path.iterdir()))}.json"
    # no file from the GPU check unless a test writes one
    flags = ["--gpu_check", str(tmp_path / "absent.json"), *flags] if "--gpu_check" not in flags else list(flags)
    result = run_ok("bench/scaling_plan.py", [*flags, "--json_out", out])
    return json.loads(out.read_text()), result.stdout


def sft_rows(figures, model, config):
    return {r["nodes"]: r for r in figures["sft"] if r["model"] == model and r["config"].endswith(config)}


def deepspeeds_table(params, largest_layer, nodes):
    """GPU and CPU GiB per option, as DeepSpeed's estimate_zero3_model_states_mem_needs_all_cold prints them."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        estimate_zero3_model_states_mem_needs_all_cold(params, largest_layer, num_gpus_per_node=8, num_nodes=nodes)
    table = {}
    for cpu, gpu, options in re.findall(r"([\d.]+)GB \|\s+([\d.]+)GB \| (.*)", printed.getvalue()):
        # (the offload device prints as "cpu" or, with some Python versions, "OffloadDeviceEnum.cpu")
        table[options.replace(" ", "").replace("OffloadDeviceEnum.", "")] = (float(gpu), float(cpu))
    return table


def test_model_states_are_deepspeeds_figures_and_their_sharded_part_halves_when_gpus_double(tmp_path):
    figures, _ = plan(tmp_path)
    models = {m["name"]: m for m in figures["models"]}
    for name, params in PUBLISHED_PARAMS.items():
        model = models[name]
        assert model["params"] == params  # the shapes give the published parameter counts
        for config, options in (
            ("zero3.yaml", "offload_param=none,offload_optimizer=none,zero_init=1"),
            ("offload.yaml", "offload_param=cpu,offload_optimizer=cpu,zero_init=1"),
        ):
            rows = sft_rows(figures, name, config)
            for nodes, row in rows.items():
                gpu, cpu = deepspeeds_table(model["params"], model["largest_layer"], nodes)[options]
                assert (round(row["model_states_gib"], 2), round(row["host_gib_per_node"], 2)) == (gpu, cpu)
        # ZeRO-3 without offload: the estimator's 18 bytes per parameter split over the GPUs, plus the largest
        # layer gathered whole (4 bytes per parameter) on every GPU
        rows, whole_layer = sft_rows(figures, name, "zero3.yaml"), 4 * model["largest_layer"] / GIB
        for fewer, more in ((1, 2), (2, 4)):
            sharded_fewer, sharded_more = rows[fewer]["model_states_gib"] - whole_layer, rows[more]["model_states_gib"]
            assert sharded_fewer == pytest.approx(2 * (sharded_more - whole_layer), abs=1e-8)
        assert sharded_fewer == pytest.approx(18 * model["params"] / (8 * 2) / GIB, abs=1e-8)
        # under offload nothing is sharded on the GPU: the largest layer alone, whatever the node count
        assert {r["model_states_gib"] for r in sft_rows(figures, name, "offload.yaml").values()} == {whole_layer}


def test_projected_times_scale_inversely_with_the_mfu_and_add_up(tmp_path):
    slow, _ = plan(tmp_path, "--mfu", "0.2")
    fast, stdout = plan(tmp_path, "--mfu", "0.4")
    assert "MFU 0.40 (given: --mfu)" in stdout and fast["mfu"]["source"] == "given"
    for before, after in zip(slow["sft"], fast["sft"]):
        assert before["compute_s"] == pytest.approx(2 * after["compute_s"], rel=1e-12)
        assert before["zero3_traffic_s"] == after["zero3_traffic_s"]  # the wires do not care about the MFU
        for row in (before, after):
            bound = max(row["compute_s"], row["zero3_traffic_s"], row["host_transfer_s"])
            assert row["epoch_s"] == pytest.approx(bound + row["cpu_adam_s"], rel=1e-12)
            assert row["run_s"] == pytest.approx(3 * row["epoch_s"], rel=1e-12)
    # 8B on one node is compute-bound: its epoch takes twice as long at half the MFU
    one_node = (sft_rows(slow, "Llama-3.1-8B", "zero3.yaml")[1], sft_rows(fast, "Llama-3.1-8B", "zero3.yaml")[1])
    assert one_node[0]["epoch_s"] == pytest.approx(2 * one_node[1]["epoch_s"], rel=1e-12)
    for before, after in zip(slow["ppo"], fast["ppo"]):
        for name, way in after["rollouts"].items():
            assert way["generate_s"] == before["rollouts"][name]["generate_s"]  # decoding is bandwidth-bound
            if way["verdict"] not in ("OOM", "fails"):
                assert way["update_s"] == pytest.approx(way["generate_s"] + after["score_s"] + after["optimise_s"])
                assert way["run_s"] == pytest.approx(157 * way["update_s"])  # 20,000 episodes / 128, rounded up


def test_the_gpu_checks_sft_mfu_is_used_and_named_as_measured(tmp_path):
    check = tmp_path / "gpu_check.json"
    check.write_text(
        json.dumps(  # the shape bench/gpu_check.py writes
            {
                "steps": {
                    "sft_zero3": {"status": "ok", "mfu": 0.41},
                    "sft_zero3_padded": {"status": "ok", "mfu": 0.31},
                    "sft_trl": {"status": "ok", "mfu": 0.5},
                }
            }
        )
    )
    measured, stdout = plan(tmp_path, "--gpu_check", str(check))
    assert measured["mfu"]["value"] == 0.41 and measured["mfu"]["source"] == "measured"
    assert "MFU 0.41 (measured" in stdout and "steps.sft_zero3.mfu" in measured["mfu"]["detail"]
    given, _ = plan(tmp_path, "--mfu", "0.41")
    assert [r["epoch_s"] for r in measured["sft"]] == [r["epoch_s"] for r in given["sft"]]
    # a file with trl's figure only: not ours to project from, so the stated assumption stays
    check.write_text(json.dumps({"steps": {"sft_zero3": {"status": "failed", "mfu": None}, "sft_trl": {"mfu": 0.5}}}))
    assumed, stdout = plan(tmp_path, "--gpu_check", str(check))
    assert assumed["mfu"]["source"] == "assumed" and assumed["mfu"]["value"] == 0.3
    assert "MFU 0.30 (assumed" in stdout


def test_verdicts_follow_from_the_memory_and_the_budget(tmp_path):
    figures, _ = plan(tmp_path)
    for row in figures["sft"]:
        assert row["total_gib"] == pytest.approx(row["model_states_gib"] + row["activations_gib"])
        expected = "fits" if row["total_gib"] <= 72 else "tight" if row["total_gib"] <= 80 else "OOM"
        assert row["verdict"] == expected
    # gradient checkpointing keeps one bf16 hidden state per layer instead of every layer's activations
    llama_8b = sft_rows(figures, "Llama-3.1-8B", "zero3.yaml")[1]
    assert llama_8b["activations_no_checkpointing_gib"] > 3 * llama_8b["activations_gib"]
    assert (llama_8b["verdict"], llama_8b["verdict_no_checkpointing"]) == ("fits", "tight")
    # 70B: ZeRO-3 alone needs 4 nodes for SFT; the colocated vLLM engine (no tensor parallelism) never holds it
    assert [r["verdict"] for r in sft_rows(figures, "Llama-3.1-70B", "zero3.yaml").values()] == ["OOM", "OOM", "fits"]
    big = [r for r in figures["ppo"] if r["setup"].startswith("70B")]
    assert all(r["rollouts"]["vllm"]["verdict"] == "fails" for r in big)
    # host memory decides 70B PPO with offload on one node: more RAM per node turns OOM into a plan
    one_node = [r for r in big if r["setup"] == "70B + 3B + 3B" and r["config"].endswith("offload.yaml")][0]
    assert one_node["nodes"] == 1 and one_node["rollouts"]["sharded"]["verdict"] == "OOM"
    assert one_node["host_gib_per_node"] > 1863
    roomy, _ = plan(tmp_path, "--node_ram_gib", "4000")
    one_node = [r for r in roomy["ppo"] if r["setup"] == "70B + 3B + 3B" and r["config"].endswith("offload.yaml")][0]
    assert one_node["rollouts"]["sharded"]["verdict"] == "fits"


def test_lora_rows_count_the_adapters_as_peft_does_and_freeze_the_base_in_bf16(tmp_path):
    """LoRA's tables: peft's own count of the adapters on every linear layer, DeepSpeed's estimator over them alone,
    the base as a frozen bf16 model; PPO keeps the same frozen models (the policy's base takes the reference's
    place) and trains the adapters and the value model."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    figures, stdout = plan(tmp_path, "--lora_r", "8")
    models = {m["name"]: m for m in figures["models"]}
    for row in figures["sft_lora"]:
        model = models[row["model"]]
        config = LlamaConfig(
            vocab_size=model["vocab"], hidden_size=model["hidden"], intermediate_size=model["intermediate"],
            num_hidden_layers=1, num_attention_heads=model["heads"], num_key_value_heads=model["kv_width"] // 128,
            head_dim=128,
        )  # fmt: skip
        with torch.device("meta"):
            one_layer = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules="all-linear"))
        assert row["trained_params"] == model["layers"] * one_layer.get_nb_trainable_parameters()[0]
        gpus = 8 * row["nodes"]
        _, adapters, _ = estimate_zero3_model_states_mem_needs(  # (host, GPU, largest layer) bytes
            total_params=row["trained_params"], largest_layer_params=8 * max(model["hidden"], model["intermediate"]),
            num_gpus_per_node=8, num_nodes=row["nodes"], cpu_offload=False, cpu_offload_params=False, zero_init=True,
        )  # fmt: skip
        frozen = 2 * model["params"] // gpus + 2 * model["largest_layer"]
        assert row["model_states_gib"] == pytest.approx((frozen + adapters) / GIB, abs=1e-9)
    assert figures["sft_lora"][0]["trained_params"] == 32 * 8 * (9 * 4096 + 2 * 1024 + 3 * 14336)  # 8B: 21M
    full = {(r["setup"], r["nodes"]): r for r in figures["ppo"] if r["config"].endswith("zero3.yaml")}
    for row in figures["ppo_lora"]:
        same = full[(row["setup"], row["nodes"])]
        assert row["frozen_gib"] == same["frozen_gib"] and row["trained_states_gib"] < same["trained_states_gib"]
    assert "#### SFT with LoRA r 8 on every linear layer" in stdout
    figures, stdout = plan(tmp_path, "--lora_r", "0")
    assert figures["sft_lora"] == figures["ppo_lora"] == [] and "LoRA" not in stdout
