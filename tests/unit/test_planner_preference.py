"""The planner with a preference objective: chosen and rejected share a micro-batch, and
DPO's reference model costs nothing with adapters and a second copy with full tuning."""

from __future__ import annotations

from kubetune.planner import plan
from kubetune.planner.memory import Strategy, estimate
from kubetune.planner.methods import policy
from kubetune.planner.shape import Request

from .test_planner_helpers import arch, pool, spec

H100 = pool("h100", per_node=8, nodes=2, cost=4.0)


def _estimate(method: str, objective: str, stage: int = 0, ranks: int = 1) -> dict[str, float]:
    a = arch("llama-3.1-8b")
    s = spec(method=method, objective=objective, training={"maxSeqLength": 1024})
    pol = policy(method)
    w = Request(a, pol, s, pol.trainable(a, s)).workload("bf16", True, 2)
    return estimate(w, Strategy(stage), gpus_per_node=ranks).terms


def test_dpo_with_an_adapter_has_no_reference_copy_but_twice_the_activations() -> None:
    sft, dpo = _estimate("lora", "sft"), _estimate("lora", "dpo")
    assert "reference" not in dpo
    assert dpo["weights"] == sft["weights"]
    assert dpo["activations"] == 2 * sft["activations"]
    assert dpo["logits"] == 2 * sft["logits"]


def test_dpo_full_keeps_a_second_16bit_copy_sharded_only_under_zero3() -> None:
    a = arch("llama-3.1-8b")
    whole = _estimate("full", "dpo", stage=2, ranks=8)["reference"]
    sharded = _estimate("full", "dpo", stage=3, ranks=8)["reference"]
    assert whole == a.parameters * 2
    assert sharded == a.parameters * 2 / 8
    assert "reference" not in _estimate("full", "orpo", stage=2, ranks=8)


def test_the_plan_says_where_the_reference_model_is() -> None:
    a = arch("llama-3.1-8b")
    lora = plan(spec(method="lora", objective="dpo"), a, [H100])
    assert any("adapter disabled: no second copy" in r for r in lora.reasons)
    full = plan(spec(method="full", objective="dpo"), a, [H100])
    line = next(r for r in full.reasons if "second frozen copy" in r)
    assert f"{full.breakdown_gi_b['reference']:.1f} GiB per GPU" in line
    sft = plan(spec(method="full"), a, [H100])
    # the copy and the doubled batch cost memory: DPO needs at least as many GPUs or as
    # small a micro-batch as SFT, never less
    assert (full.total_gpus, -full.micro_batch_size) >= (sft.total_gpus, -sft.micro_batch_size)
    assert full.breakdown_gi_b["reference"] > 0
    orpo = plan(spec(method="lora", objective="orpo"), a, [H100])
    assert any("no reference model" in r for r in orpo.reasons)
