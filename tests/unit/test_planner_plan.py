"""The planner's decisions, and the field's published rules reproduced."""

from __future__ import annotations

import pytest

from kubetune.api.status import Plan
from kubetune.planner import PlanRefused, default_pools, load_pools, plan
from kubetune.planner import calibration as cal
from kubetune.planner.memory import Strategy, estimate
from kubetune.planner.methods import policy
from kubetune.planner.shape import Request

from .test_planner_helpers import FIXTURES, arch, pool, spec

H100 = pool("h100", per_node=8, nodes=2, cost=4.0)
L4 = pool("l4", "NVIDIA-L4", 22.5)  # a 24 GB card as the driver reports it
L40S = pool("l40s", "NVIDIA-L40S", 45)  # a 48 GB card


# ------------------------------------------------------------------ published rules
def test_7b_lora_r16_fits_one_24gb_gpu_with_checkpointing() -> None:
    s = spec(
        method="lora",
        lora={"r": 16},
        training={"maxSeqLength": 1024, "gradientCheckpointing": True},
    )
    for name in ("llama-2-7b", "mistral-7b-v0.1"):
        p = plan(s, arch(name), [L4])
        assert (p.method, p.total_gpus, p.zero_stage) == ("lora", 1, 0)
        assert p.predicted_peak_gi_b <= 0.9 * 22.5


def test_7b_full_needs_80_to_120_gib_so_it_is_sharded_across_gpus() -> None:
    a = arch("llama-2-7b")
    s = spec(method="full")
    one_gpu = estimate(
        Request(a, policy("full"), s, a.parameters).workload("bf16", True, 1), Strategy(0)
    )
    states = one_gpu.terms["weights"] + one_gpu.terms["gradients"] + one_gpu.terms["optimizer"]
    assert 80 <= states / cal.GiB <= 120
    p = plan(s, a, [H100])
    assert p.total_gpus > 1 and p.zero_stage in (2, 3)
    assert p.predicted_peak_gi_b <= 0.9 * 79.6


def test_qlora_fits_a_70b_model_on_one_48gb_gpu() -> None:
    s = spec(
        method="qlora",
        lora={"r": 8},
        training={"maxSeqLength": 512},
        resources={"maxGPUMemoryFraction": 0.98},
    )
    p = plan(s, arch("llama-3.1-70b"), [L40S])
    assert (p.method, p.total_gpus) == ("qlora", 1)
    assert p.predicted_peak_gi_b <= 45


def test_auto_picks_qlora_for_70b_on_48gb_gpus() -> None:
    s = spec(
        lora={"r": 8},
        training={"maxSeqLength": 512},
        resources={"maxGPUMemoryFraction": 0.98, "maxGPUs": 1},
    )
    assert plan(s, arch("llama-3.1-70b"), [L40S]).method == "qlora"


# LLaMA-Factory README "Hardware Requirement" (GB): full bf16, LoRA 16-bit, QLoRA 4-bit.
LLAMA_FACTORY = {
    ("llama-2-7b", "full"): 120,
    ("llama-2-7b", "lora"): 16,
    ("llama-2-7b", "qlora"): 6,
    ("llama-3.1-70b", "full"): 1200,
    ("llama-3.1-70b", "lora"): 160,
    ("llama-3.1-70b", "qlora"): 48,
}


@pytest.mark.parametrize(("name", "method"), sorted(LLAMA_FACTORY))
def test_totals_agree_with_llama_factory_table(name: str, method: str) -> None:
    """One-GPU totals at micro-batch 1, 1024 tokens, r=8, checkpointing (their setting)."""
    a = arch(name)
    s = spec(
        method=method, lora={"r": 8} if method != "full" else None, training={"maxSeqLength": 1024}
    )
    pol = policy(method)
    total = estimate(
        Request(a, pol, s, pol.trainable(a, s)).workload("bf16", True, 1), Strategy(0)
    ).total
    published = LLAMA_FACTORY[(name, method)] * 1e9
    assert 0.75 * published <= total <= 1.15 * published, total / 1e9


# ------------------------------------------------------------------ decisions
def test_auto_defaults_to_lora_and_full_needs_a_large_dataset() -> None:
    a = arch("llama-3.1-8b")
    assert plan(spec(), a, [H100]).method == "lora"
    assert plan(spec(), a, [H100], dataset_size=10_000).method == "lora"
    big = plan(spec(), a, [H100], dataset_size=60_000)
    assert big.method == "full" and big.zero_stage in (2, 3)


def test_explicit_method_is_honoured() -> None:
    a = arch("llama-3.2-1b")
    for method in ("full", "lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3"):
        p = plan(spec(method=method), a, [H100])
        assert p.method == method
        assert p.learning_rate == policy(method).default_lr


def test_default_learning_rates_and_spec_override() -> None:
    lrs = {
        m: policy(m).default_lr
        for m in ("lora", "qlora", "full", "prompt-tuning", "prefix-tuning", "ia3")
    }
    assert lrs == {
        "lora": 2e-4,
        "qlora": 2e-4,
        "full": 2e-5,
        "prompt-tuning": 3e-2,
        "prefix-tuning": 1e-2,
        "ia3": 3e-3,
    }
    p = plan(spec(training={"learningRate": 1e-4}), arch("llama-3.2-1b"), [H100])
    assert p.learning_rate == 1e-4


def test_full_70b_with_two_gpus_is_refused_with_numbers() -> None:
    s = spec(method="full", resources={"maxGPUs": 2})
    with pytest.raises(PlanRefused) as err:
        plan(s, arch("llama-3.1-70b"), [H100])
    msg = err.value.reason
    assert "1.27 TB" in msg and "use lora or qlora" in msg and "raise maxGPUs" in msg
    assert err.value.alternatives


def test_full_70b_fits_two_nodes_of_h100_only_without_the_limit() -> None:
    s = spec(method="full", training={"globalBatchSize": 32, "maxSeqLength": 1024})
    p = plan(s, arch("llama-3.1-70b"), [pool("h100", per_node=8, nodes=4)])
    assert p.zero_stage == 3 and p.total_gpus >= 16 and p.offload == "none"


def test_lora_on_several_gpus_uses_ddp_then_zero3() -> None:
    small = plan(spec(method="lora", resources={"minGPUs": 2}), arch("llama-3.2-1b"), [H100])
    assert small.total_gpus == 2 and small.zero_stage == 0
    big = plan(spec(method="lora", resources={"maxNodes": 1}), arch("llama-3.1-70b"), [H100])
    assert big.zero_stage == 3 and big.total_gpus > 1


def test_batch_split_reaches_the_global_batch() -> None:
    for gbs in (1, 6, 16, 64):
        p = plan(spec(training={"globalBatchSize": gbs}), arch("qwen2.5-0.5b"), [H100])
        assert p.micro_batch_size * p.gradient_accumulation_steps * p.total_gpus == gbs
        assert p.micro_batch_size <= cal.MAX_MICRO_BATCH


def test_checkpointing_decided_and_honoured() -> None:
    a = arch("qwen2.5-0.5b")
    assert plan(spec(), a, [H100]).gradient_checkpointing is False
    forced = plan(spec(training={"gradientCheckpointing": True}), a, [H100])
    assert forced.gradient_checkpointing is True
    big = plan(spec(training={"maxSeqLength": 8192}), arch("llama-3.1-8b"), [L40S])
    assert big.gradient_checkpointing is True


def test_precision_follows_the_gpu() -> None:
    a = arch("qwen2.5-0.5b")
    v100 = pool("v100", "Tesla-V100-SXM2-32GB", 32)
    assert plan(spec(), a, [v100]).precision == "fp16"
    assert plan(spec(), a, [H100]).precision == "bf16"
    with pytest.raises(PlanRefused, match="no bf16"):
        plan(spec(training={"precision": "bf16"}), a, [v100])


def test_resources_constrain_the_shape() -> None:
    a = arch("llama-3.2-1b")
    pools = [H100, L4]
    assert plan(spec(resources={"gpuType": "L4"}), a, pools).pool == "l4"
    assert plan(spec(resources={"gpuType": "H100-80GB"}), a, pools).pool == "h100"
    p = plan(spec(resources={"minGPUs": 4}), a, pools)
    assert p.total_gpus >= 4
    with pytest.raises(PlanRefused, match="gpuType"):
        plan(spec(resources={"gpuType": "B200"}), a, pools)


def test_max_cost_per_hour_excludes_expensive_shapes() -> None:
    a = arch("llama-3.2-1b")
    cheap = pool("cheap", "NVIDIA-L4", 22.5, cost=0.8)
    p = plan(spec(resources={"maxCostPerHour": 2.0}), a, [H100, cheap])
    assert p.pool == "cheap" and p.cost_per_hour == 0.8


def test_cost_per_step_breaks_ties_between_pools() -> None:
    a = arch("llama-3.2-1b")
    slow = pool("a100", "NVIDIA-A100-SXM4-80GB", 80, cost=3.9)
    fast = pool("h100", cost=4.0)
    p = plan(spec(), a, [slow, fast])
    assert p.pool == "h100"  # 3x the throughput for 3 % more per hour
    assert any(alt.pool == "a100" and "per step" in alt.reason for alt in p.alternatives)


def test_offload_only_with_known_host_memory() -> None:
    a = arch("llama-3.1-8b")
    s = spec(method="full", resources={"maxGPUs": 1})
    with pytest.raises(PlanRefused):
        plan(s, a, [pool("h100")])
    p = plan(s, a, [pool("h100", host_memory_gi_b=1900)])
    assert p.offload != "none" and p.host_memory_gi_b > 0
    assert any("CPU offload" in w for w in p.warnings)


def test_warnings_from_the_field() -> None:
    a = arch("llama-3.2-1b")
    tiny = plan(spec(), a, [H100], dataset_size=50)
    assert any("prompting" in w for w in tiny.warnings)
    thin = plan(spec(), a, [H100], dataset_size=300)
    assert any("thin for LoRA" in w for w in thin.warnings)
    rank = plan(spec(lora={"r": 128}), a, [H100], dataset_size=2000)
    assert any("overfitting" in w for w in rank.warnings)
    q = plan(spec(method="qlora"), a, [H100])
    assert any("numerical-precision" in w for w in q.warnings)
    with pytest.raises(PlanRefused, match="c_attn"):  # a typo, not a smaller adapter
        plan(spec(lora={"targetModules": ["c_attn"]}), a, [H100])


def test_plan_reports_its_arithmetic_and_round_trips() -> None:
    p = plan(spec(), arch("llama-3.1-8b"), [H100, L4, L40S])
    assert p.parameters == 8_030_261_248 and p.trainable_parameters == 41_943_040
    assert sum(p.breakdown_gi_b.values()) == pytest.approx(p.predicted_peak_gi_b, abs=0.05)
    assert p.headroom_gi_b == pytest.approx(
        0.9 * p.gpu_memory_gi_b - p.predicted_peak_gi_b, abs=0.05
    )
    assert p.reasons and p.alternatives
    wire = p.to_k8s()
    assert {"zeroStage", "totalGPUs", "predictedPeakGiB", "breakdownGiB"} <= set(wire)
    assert Plan.model_validate(wire) == p


def test_fixture_and_default_pools_plan() -> None:
    s = spec(method="qlora", training={"maxSeqLength": 4096, "globalBatchSize": 32})
    for pools in (load_pools(FIXTURES / "pools.yaml"), default_pools()):
        p = plan(s, arch("llama-3.1-70b"), pools)
        assert p.method == "qlora" and p.predicted_peak_gi_b <= 0.9 * p.gpu_memory_gi_b


def test_no_pools_is_refused() -> None:
    with pytest.raises(PlanRefused, match="no GPU node pools"):
        plan(spec(), arch("llama-3.2-1b"), [])


def test_unknown_lora_target_is_refused_with_the_known_names() -> None:
    import yaml

    from kubetune.api import FineTuneJob

    job = FineTuneJob.model_validate(
        yaml.safe_load(
            """
metadata: {name: x}
spec:
  model:
    hf: {repo: a/b}
    architecture: {numLayers: 32, hiddenSize: 4096, intermediateSize: 14336,
                   numAttentionHeads: 32, numKeyValueHeads: 8, vocabSize: 128256}
  dataset: {train: {pvc: {claimName: data}}}
  method: lora
  lora: {targetModules: [q_proj, attn_qkv_proj]}
"""
        )
    )
    pools = load_pools(FIXTURES / "pools.yaml")
    with pytest.raises(PlanRefused, match=r"attn_qkv_proj match no linear layer.*q_proj"):
        plan(job.spec, job.spec.model.architecture, pools)  # type: ignore[arg-type]


def test_heads_must_divide_hidden_size() -> None:
    from kubetune.api.spec import Architecture
    from kubetune.planner import ArchitectureError
    from kubetune.planner.architecture import from_spec

    with pytest.raises(ArchitectureError, match="not divisible"):
        from_spec(Architecture(num_layers=2, hidden_size=100, num_attention_heads=3, vocab_size=10))
