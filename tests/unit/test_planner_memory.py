"""The memory terms against their sources."""

from __future__ import annotations

import pytest

from kubetune.planner import calibration as cal
from kubetune.planner.architecture import Arch
from kubetune.planner.memory import (
    Strategy,
    Workload,
    activations,
    estimate,
    logits,
    model_states,
    nf4_bytes_per_weight,
)

from .test_planner_helpers import arch

GPT = Arch(
    num_layers=24,
    hidden_size=2048,
    vocab_size=50_000,
    intermediate_size=8192,
    num_attention_heads=16,
    num_key_value_heads=16,
    head_dim=128,
    model_type="gpt2",
)


def work(a: Arch = GPT, **kw: object) -> Workload:
    base: dict = dict(
        arch=a,
        method="lora",
        trains_all=False,
        trainable=1000,
        frozen_weight_bytes=2.0 * a.parameters,
        seq_len=1024,
        micro_batch=2,
        checkpointing=False,
    )
    base.update(kw)
    return Workload(**base)


def test_nf4_double_quant_is_0516_bytes_per_weight() -> None:
    assert nf4_bytes_per_weight(True) == pytest.approx(0.516, abs=0.0005)  # 4.127 bits
    assert nf4_bytes_per_weight(False) == pytest.approx(4.5 / 8)


def test_korthikanti_activations_for_a_gpt_layer() -> None:
    s, b, h, a, L = 1024, 2, GPT.hidden_size, GPT.num_attention_heads, GPT.num_layers
    no_flash = activations(work(flash_attention=False))
    assert no_flash == pytest.approx(L * s * b * h * (34 + 5 * a * s / h))
    assert activations(work()) == pytest.approx(L * s * b * h * 34)
    # full recompute: 2sbh per layer plus one layer recomputed in the backward pass
    assert activations(work(checkpointing=True)) == pytest.approx(s * b * h * (2 * L + 34))


def test_logits_are_ten_bytes_per_entry_in_16_bit() -> None:
    assert logits(work()) == 1024 * 2 * 50_000 * 10


def test_mixed_precision_full_training_is_18_bytes_per_parameter_on_one_gpu() -> None:
    a = arch("llama-3.1-8b")
    w = work(a, method="full", trains_all=True, trainable=a.parameters)
    states, host = model_states(w, Strategy(0), 1, 1)
    assert sum(states.values()) == 18 * a.parameters and host == 0


def test_lora_states_are_frozen_weights_plus_16_bytes_per_adapter_parameter() -> None:
    a = arch("llama-3.1-8b")
    w = work(a, trainable=41_943_040)
    states, _ = model_states(w, Strategy(0), 1, 1)
    assert sum(states.values()) == 2 * a.parameters + 16 * 41_943_040


def test_lora_zero3_shards_the_frozen_base() -> None:
    a = arch("llama-3.1-70b")
    w = work(a, trainable=10**8)
    one = sum(model_states(w, Strategy(0), 1, 1)[0].values())
    eight = sum(model_states(w, Strategy(3), 8, 1)[0].values())
    assert eight < one / 5


def test_lora_dropout_and_rank_add_adapter_activations() -> None:
    a = arch("llama-3.1-8b")
    lin = tuple(a.linears())
    base = activations(work(a))
    assert activations(work(a, adapted=lin, lora_rank=16)) > base
    assert activations(work(a, adapted=lin, lora_rank=16, lora_dropout=True)) > activations(
        work(a, adapted=lin, lora_rank=16)
    )


def test_overhead_and_corrections(monkeypatch: pytest.MonkeyPatch) -> None:
    w = work()
    single = estimate(w, Strategy(0))
    multi = estimate(w, Strategy(0), gpus_per_node=2)
    assert multi.terms["overhead"] - single.terms["overhead"] == pytest.approx(
        cal.NCCL_BUFFERS_GIB * cal.GiB
    )
    monkeypatch.setitem(cal.CORRECTIONS, ("lora", "activations"), 1.5)
    corrected = estimate(w, Strategy(0))
    assert corrected.terms["activations"] == pytest.approx(1.5 * single.terms["activations"])
    assert set(single.gib()) == {
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "logits",
        "overhead",
    }


def test_gpu_catalog() -> None:
    assert cal.gpu_spec("NVIDIA-H100-80GB-HBM3").bf16
    assert not cal.gpu_spec("Tesla-V100-SXM2-16GB").bf16
    assert not cal.gpu_spec("Tesla-T4").bf16
    assert cal.gpu_spec("NVIDIA-L40S").dense_tflops_16bit == 362
    assert cal.gpu_spec("NVIDIA-L4").dense_tflops_16bit == 121
    assert cal.gpu_spec("NVIDIA GeForce RTX 4090").bf16
    assert cal.gpu_spec("mystery").bf16
