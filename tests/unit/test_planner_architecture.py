"""Parameter counts of real models, LoRA trainable counts, and config/spec reading."""

from __future__ import annotations

import pytest

from kubetune.api.spec import Architecture
from kubetune.planner.architecture import (
    ArchitectureError,
    as_arch,
    from_config,
    resolve_targets,
)
from kubetune.planner.methods import policy

from .test_planner_helpers import arch, spec

# Published parameter counts (model cards / safetensors metadata).
PUBLISHED = {
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "llama-2-7b": 6_738_415_616,
    "mistral-7b-v0.1": 7_241_732_096,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
    "gemma-2-2b": 2_614_341_888,
    "phi-3-mini-4k": 3_821_079_552,
    "mixtral-8x7b": 46_702_792_704,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_count_within_one_percent(name: str) -> None:
    counted = arch(name).parameters
    assert abs(counted - PUBLISHED[name]) / PUBLISHED[name] < 0.01
    assert counted == PUBLISHED[name]  # in fact exact for these families


def test_mixtral_active_parameters_match_the_published_12_9b() -> None:
    assert arch("mixtral-8x7b").active_parameters == pytest.approx(12.9e9, rel=0.01)


@pytest.mark.parametrize(
    ("targets", "expected"),
    [(["q_proj", "k_proj", "v_proj", "o_proj"], 13_631_488), (["all-linear"], 41_943_040)],
)
def test_lora_trainable_llama3_8b(targets: list[str], expected: int) -> None:
    s = spec(method="lora", lora={"r": 16, "targetModules": targets})
    assert policy("lora").trainable(arch("llama-3.1-8b"), s) == expected


def test_lora_trains_a_tenth_to_one_percent() -> None:
    for name in ("llama-2-7b", "llama-3.1-8b", "mistral-7b-v0.1", "llama-3.1-70b"):
        a = arch(name)
        share = policy("lora").trainable(a, spec(method="lora")) / a.parameters
        assert 0.001 <= share <= 0.01, (name, share)


def test_all_linear_follows_the_family_naming() -> None:
    names = lambda n: [lin.name for lin in resolve_targets(arch(n), ["all-linear"])[0]]  # noqa: E731
    assert names("phi-3-mini-4k") == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    assert names("llama-3.1-8b") == [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ]
    assert "gate" in names("mixtral-8x7b")  # the router is an nn.Linear too


def test_unknown_target_is_reported() -> None:
    chosen, unknown = resolve_targets(arch("llama-3.1-8b"), ["q_proj", "c_attn"])
    assert [c.name for c in chosen] == ["q_proj"]
    assert unknown == ["c_attn"]


def test_qwen2_counts_qkv_biases_and_gemma2_four_norms() -> None:
    q = arch("qwen2.5-0.5b")
    assert any(lin.bias for lin in q.linears())
    assert arch("gemma-2-2b").norms_per_layer == 4
    assert arch("gemma-2-2b").tie_word_embeddings


def test_spec_architecture_with_shape_is_exact() -> None:
    a = as_arch(
        Architecture(
            num_layers=32,
            hidden_size=4096,
            intermediate_size=14336,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=False,
        )
    )
    assert a.parameters == 8_030_261_248
    assert not a.rough


def test_spec_architecture_with_parameters_only_is_rough() -> None:
    a = as_arch(Architecture(parameters=7_000_000_000))
    assert a.rough and a.parameters == 7_000_000_000
    assert 3000 <= a.hidden_size <= 5000 and 20 <= a.num_layers <= 48
    assert a.notes


def test_config_without_shape_is_refused() -> None:
    with pytest.raises(ArchitectureError):
        from_config({"model_type": "llama"})


def test_multimodal_text_config_is_read() -> None:
    inner = {
        "model_type": "gemma3_text",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "vocab_size": 100,
        "intermediate_size": 128,
        "num_attention_heads": 2,
    }
    a = from_config({"model_type": "gemma3", "text_config": inner})
    assert a.hidden_size == 64 and a.norms_per_layer == 4
