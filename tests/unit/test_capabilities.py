"""One method-capability table: the planner plans only what it allows, the trainer refuses
everything else, and the docs show it as it is."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.spec import Method
from kubetune.capabilities import CAPABILITIES, METHODS, markdown_table
from kubetune.planner import PlanRefused, plan
from kubetune.planner.memory import LOADING
from kubetune.planner.methods import REGISTRY, policy
from kubetune_trainer.methods import METHODS as TRAINER_METHODS
from kubetune_trainer.methods import get_method
from kubetune_trainer.testing import make_config, make_plan

from .test_planner_helpers import arch, pool, spec

ROOT = Path(__file__).resolve().parents[2]


def test_docs_show_the_table_as_it_is() -> None:
    assert markdown_table() in (ROOT / "docs/planner.md").read_text()


def test_one_set_of_methods_everywhere() -> None:
    assert set(REGISTRY) == set(TRAINER_METHODS) == set(CAPABILITIES) == set(METHODS)
    assert set(typing.get_args(Method)) == {"auto", *METHODS}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ranks", [1, 2, 8, 32])
def test_the_planner_offers_only_layouts_the_table_allows(method: str, ranks: int) -> None:
    cap = CAPABILITIES[method]
    offered = policy(method).strategies(ranks)
    assert offered, f"{method} has no layout on {ranks} GPU(s)"
    for s in offered:
        assert cap.layout_problem(s.stage, s.offload) is None, (method, s)


def test_qlora_70b_on_8_l4_is_never_a_plan_the_trainer_refuses() -> None:
    """Main planned 2 nodes x 4 L4 with ZeRO-3 for this, and the trainer refused QLoRA
    under ZeRO as bad input after the pods were scheduled. The 4-bit 70B base (~37 GiB)
    loads whole on every rank before DeepSpeed shards it, so no L4 shape holds it."""
    s = spec(method="qlora", training={"maxSeqLength": 1024})
    l4 = pool("l4", "NVIDIA-L4", 22.5, per_node=4, nodes=2)
    with pytest.raises(PlanRefused) as refused:
        plan(s, arch("llama-3.1-70b"), [l4])
    assert "L4" in refused.value.reason or "l4" in refused.value.reason


def test_qlora_under_zero3_counts_the_whole_4bit_base_while_loading() -> None:
    """Where DDP does not fit but the 4-bit base itself does, QLoRA is planned under
    ZeRO-3 (bnb_4bit_quant_storage = the model dtype) and the trainer accepts it; the
    predicted peak is at least the whole 4-bit base each rank holds while loading."""
    s = spec(method="qlora", training={"maxSeqLength": 16384, "globalBatchSize": 16})
    p = plan(s, arch("llama-3.1-70b"), [pool(per_node=8)])
    assert (p.zero_stage, p.offload, p.total_gpus > 1) == (3, "none", True)
    whole = policy("qlora").frozen_weight_bytes(arch("llama-3.1-70b"), s, 2) / 2**30
    assert p.predicted_peak_gi_b >= whole
    assert any("bnb_4bit_quant_storage" in r for r in p.reasons)
    cfg = make_config(
        {"kind": "FineTuneJob", "metadata": {"name": "q"}, "spec": s.to_k8s()}, p, "/tmp/q"
    )
    get_method("qlora").validate(cfg.spec, cfg.plan)  # accepted


def test_load_peak_term_appears_only_when_it_dominates() -> None:
    s = spec(method="qlora", training={"maxSeqLength": 16384})
    p = plan(s, arch("llama-3.1-70b"), [pool(per_node=8)])
    assert sum(p.breakdown_gi_b.values()) == pytest.approx(p.predicted_peak_gi_b, abs=0.05)
    if LOADING in p.breakdown_gi_b:
        assert p.breakdown_gi_b[LOADING] > 0


def test_prompt_tuning_is_never_sharded_and_the_refusal_says_why() -> None:
    """Main planned prompt tuning of an 8B model on 4xT4 with ZeRO-3, which the trainer
    refused after scheduling. PEFT 0.21 cannot save virtual tokens under ZeRO-3 (its
    encoder runs on rank 0 alone and waits for the others forever), so it is never planned:
    the 16-bit 8B base does not fit a 15 GiB T4, and the refusal says why not sharded."""
    s = spec(method="prompt-tuning")
    t4 = pool("t4", "Tesla-T4", 15, per_node=4)
    with pytest.raises(PlanRefused) as refused:
        plan(s, arch("llama-3.1-8b"), [t4])
    assert "no ZeRO-3" in refused.value.reason and "rank 0" in refused.value.reason
    assert "use lora or qlora" in refused.value.reason
    four = spec(method="prompt-tuning", resources={"minGPUs": 4})
    p = plan(four, arch("llama-3.2-1b"), [t4])  # DDP over four GPUs, and why not ZeRO-3
    assert p.zero_stage == 0
    assert any("ZeRO-3 is not offered for prompt-tuning" in r for r in p.reasons)


def test_prefix_tuning_is_never_planned_with_gradient_checkpointing() -> None:
    """The trainer used to drop checkpointing silently for prefix tuning: a plan that ran
    as something else. Now the planner never plans it, and refuses it when asked."""
    a = arch("llama-3.1-8b")
    s = spec(method="prefix-tuning", training={"maxSeqLength": 4096})
    p = plan(s, a, [pool(per_node=8)])
    assert p.gradient_checkpointing is False
    asked = spec(method="prefix-tuning", training={"gradientCheckpointing": True})
    with pytest.raises(PlanRefused, match="gradientCheckpointing"):
        plan(asked, a, [pool()])


@pytest.mark.parametrize("method", METHODS)
def test_learning_rate_defaults_come_from_the_table(method: str) -> None:
    extra: dict[str, Any] = (
        {"promptTuning": {}} if method in ("prompt-tuning", "prefix-tuning") else {}
    )
    p = plan(spec(method=method, **extra), arch("qwen2.5-0.5b"), [pool()])
    assert p.learning_rate == CAPABILITIES[method].default_learning_rate
    assert make_plan(method).learning_rate == CAPABILITIES[method].default_learning_rate
