"""Cross-checks against the libraries themselves: PEFT's trainable counts on tiny models
built with transformers, and DeepSpeed's own ZeRO memory estimators."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.planner.architecture import from_config
from kubetune.planner.memory import Strategy, Workload, model_states
from kubetune.planner.methods import policy

from .test_planner_helpers import arch, spec

pytestmark = pytest.mark.trainer

TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 100,
    "tie_word_embeddings": False,
}


def _peft_count(config: dict[str, Any], peft_config: Any) -> tuple[int, int]:
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    cfg = transformers.AutoConfig.for_model(**config)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable, _ = peft.get_peft_model(model, peft_config).get_nb_trainable_parameters()
    return trainable, total


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["all-linear"]])
def test_lora_count_equals_peft(targets: list[str]) -> None:
    peft = pytest.importorskip("peft")
    # PEFT wants the string "all-linear", not a list holding it (the trainer converts).
    peft_targets = "all-linear" if targets == ["all-linear"] else targets
    trainable, total = _peft_count(TINY, peft.LoraConfig(r=4, target_modules=peft_targets))
    s = spec(method="lora", lora={"r": 4, "targetModules": targets})
    assert policy("lora").trainable(from_config(TINY), s) == trainable
    assert from_config(TINY).parameters == total


def test_lora_count_equals_peft_on_fused_phi3() -> None:
    peft = pytest.importorskip("peft")
    cfg = {
        **TINY,
        "model_type": "phi3",
        "num_key_value_heads": 4,
        "pad_token_id": 0,
        "eos_token_id": 1,
        "bos_token_id": 1,
    }
    trainable, total = _peft_count(cfg, peft.LoraConfig(r=4, target_modules="all-linear"))
    s = spec(method="lora", lora={"r": 4})
    assert policy("lora").trainable(from_config(cfg), s) == trainable
    assert from_config(cfg).parameters == total


def test_prefix_and_ia3_counts_equal_peft() -> None:
    peft = pytest.importorskip("peft")
    a = from_config(TINY)
    n, _ = _peft_count(TINY, peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    s = spec(method="prefix-tuning", promptTuning={"numVirtualTokens": 5})
    assert policy("prefix-tuning").trainable(a, s) == n
    n, _ = _peft_count(TINY, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    assert (
        policy("prompt-tuning").trainable(
            a, spec(method="prompt-tuning", promptTuning={"numVirtualTokens": 5})
        )
        == n
    )
    n, _ = _peft_count(TINY, peft.IA3Config(task_type="CAUSAL_LM"))
    assert policy("ia3").trainable(a, spec(method="ia3")) == n


def _full(name: str) -> Workload:
    a = arch(name)
    return Workload(
        arch=a,
        method="full",
        trains_all=True,
        trainable=a.parameters,
        frozen_weight_bytes=0,
        seq_len=1,
        micro_batch=1,
        checkpointing=True,
    )


@pytest.mark.parametrize(("gpn", "nodes"), [(1, 1), (8, 1), (8, 2)])
def test_zero_formulas_equal_deepspeed_estimators(gpn: int, nodes: int) -> None:
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    w = _full("llama-3.1-8b")
    p, ll = w.arch.parameters, w.arch.largest_layer_parameters
    gpu = lambda s: sum(model_states(w, s, gpn, nodes)[0].values())  # noqa: E731
    host = lambda s: model_states(w, s, gpn, nodes)[1]  # noqa: E731
    _, ds2 = estimate_zero2_model_states_mem_needs(p, gpn, nodes, cpu_offload=False)
    assert gpu(Strategy(2)) == pytest.approx(ds2, abs=1)
    cpu2, ds2o = estimate_zero2_model_states_mem_needs(p, gpn, nodes, cpu_offload=True)
    assert gpu(Strategy(2, "optimizer")) == pytest.approx(ds2o, abs=1)
    assert host(Strategy(2, "optimizer")) == pytest.approx(cpu2, rel=1e-9)
    _, ds3, _ = estimate_zero3_model_states_mem_needs(p, ll, gpn, nodes, cpu_offload=False)
    assert gpu(Strategy(3)) == pytest.approx(ds3, abs=1)
    cpu, ds3o, _ = estimate_zero3_model_states_mem_needs(
        p, ll, gpn, nodes, cpu_offload=True, cpu_offload_params=False
    )
    assert gpu(Strategy(3, "optimizer")) == pytest.approx(ds3o, abs=1)
    assert host(Strategy(3, "optimizer")) == pytest.approx(cpu, rel=1e-9)
    cpu, ds3p, _ = estimate_zero3_model_states_mem_needs(p, ll, gpn, nodes)
    assert gpu(Strategy(3, "optimizer+parameters")) == pytest.approx(ds3p, abs=1)
    assert host(Strategy(3, "optimizer+parameters")) == pytest.approx(cpu, rel=1e-9)
