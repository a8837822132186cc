"""What the planner is given and what the plan keeps of it: exact GPU types, the
dataset's size, the placement, and the probed shape an OOM re-plan starts from."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.api.status import Plan
from kubetune.operator.reconcile import Ctx, Reconciler, _now, _probe_result
from kubetune.operator.settings import Settings
from kubetune.planner import DatasetSize, PlanRefused, plan
from kubetune.planner.architecture import from_config, from_spec, to_spec
from kubetune.planner.pools import load_pools
from kubetune.planner.shape import pool_matches

from .test_planner_helpers import CONFIGS, FIXTURES, arch, pool, spec

ROOT = Path(__file__).resolve().parents[2]
L4 = pool("l4", "NVIDIA-L4", 22.5)
L40S = pool("l40s", "NVIDIA-L40S", 45)
A10 = pool("a10", "NVIDIA-A10", 22.5)
A10G = pool("a10g", "NVIDIA-A10G", 22.5)
A100 = pool("a100", "NVIDIA-A100-SXM4-40GB", 40)
H100 = pool("h100", "NVIDIA-H100-80GB-HBM3", 79.6)
ALL = (L4, L40S, A10, A10G, A100, H100)


@pytest.mark.parametrize(
    ("wanted", "matches"),
    [
        ("L4", {"l4"}),  # main matched L40S too ("L4" is a substring of "L40S")
        ("NVIDIA-L4", {"l4"}),
        ("nvidia-l4", {"l4"}),
        ("L4-24GB", {"l4"}),  # 22.5 GiB = 24.2 GB
        ("L40S", {"l40s"}),
        ("A10", {"a10"}),  # main matched A100 and A10G too
        ("A10G", {"a10g"}),
        ("A100", {"a100"}),
        ("A100-40GB", {"a100"}),
        ("H100", {"h100"}),
        ("H100-80GB", {"h100"}),
        ("NVIDIA-H100-80GB-HBM3", {"h100"}),
        ("h100", {"h100"}),  # the pool's name
        ("H100-40GB", set()),
        ("L4-48GB", set()),
        ("auto", {p.name for p in ALL}),
    ],
)
def test_gpu_type_matches_exactly_with_clear_aliases(wanted: str, matches: set[str]) -> None:
    assert {p.name for p in ALL if pool_matches(p, wanted)} == matches


def test_a_gpu_type_no_pool_has_is_refused_with_the_spellings() -> None:
    with pytest.raises(PlanRefused, match="short form") as refused:
        plan(spec(resources={"gpuType": "L4-48GB"}), arch("qwen2.5-0.5b"), [L4, L40S])
    assert "NVIDIA-L4" in refused.value.reason


def test_the_kueue_example_plans_on_an_l4_pool() -> None:
    """The shipped example asked for L4-24GB (which no pool matched on main) and was
    spec.suspend'ed, so the operator never created the Job Kueue admits."""
    doc = yaml.safe_load((ROOT / "examples/kueue.yaml").read_text())
    from kubetune.api import FineTuneJob

    job = FineTuneJob.model_validate(doc)
    assert job.spec.suspend is False
    pools = load_pools(ROOT / "tests/localcluster/pools.yaml")
    p = plan(job.spec, arch("mistral-7b-v0.1"), pools)
    assert p.pool == "l4" and p.gpu_type == "NVIDIA-L4"


def test_dataset_size_decides_auto_and_the_warnings() -> None:
    """The seeds' rules: full fine-tuning only on a large dataset (>= 50k examples),
    warnings on tiny ones; main never gave the planner a size in the cluster."""
    a, big = arch("qwen2.5-0.5b"), [pool(per_node=8)]
    large = plan(spec(), a, big, DatasetSize(rows=60_000, tokens=9_000_000))
    assert large.method == "full" and (large.dataset_rows, large.dataset_tokens) == (
        60_000,
        9_000_000,
    )
    assert any("60,000 examples, ~9,000,000 tokens" in r for r in large.reasons)
    small = plan(spec(), a, big, DatasetSize(rows=80, tokens=4000))
    assert small.method == "lora"
    assert any("only 80 examples" in w for w in small.warnings)
    unknown = plan(spec(), a, big)
    assert unknown.method == "lora" and unknown.dataset_rows is None
    assert any("dataset size unknown" in r for r in unknown.reasons)


def test_a_count_cut_short_proves_large_never_small() -> None:
    a, big = arch("qwen2.5-0.5b"), [pool(per_node=8)]
    lower_bound = DatasetSize(rows=70_000, complete=False)
    assert plan(spec(), a, big, lower_bound).method == "full"
    partial = plan(spec(), a, big, DatasetSize(rows=90, complete=False))
    assert partial.method == "lora"
    assert not any("only 90 examples" in w for w in partial.warnings)


def test_the_probe_message_gives_config_and_size() -> None:
    config, size, why = _probe_result(
        '{"config": {"model_type": "llama"}, "dataset": {"rows": 7, "tokens": 30,'
        ' "complete": true}}'
    )
    assert config == {"model_type": "llama"} and size == DatasetSize(7, 30, True) and not why
    _, size, why = _probe_result('{"dataset": {"error": "BadInput: no such file"}}')
    assert size is None and "no such file" in why


@pytest.mark.parametrize("model", sorted(p.stem for p in CONFIGS.glob("*.json")))
def test_the_plan_keeps_the_shape_it_was_planned_from(model: str) -> None:
    a = arch(model)
    p = plan(spec(), a, [pool(per_node=8, nodes=2)])
    assert p.architecture is not None
    again = from_spec(p.architecture, name=a.name)
    assert again.parameters == a.parameters and again.linears() == a.linears()


def test_the_plan_carries_the_pool_placement() -> None:
    pools = load_pools(FIXTURES / "pools.yaml")
    p = plan(spec(resources={"gpuType": "H100"}), arch("llama-3.1-8b"), pools)
    assert p.node_selector == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert [t.key for t in p.tolerations] == ["nvidia.com/gpu"]


def test_oom_replan_starts_from_the_probed_shape() -> None:
    """Main re-planned QLoRA after an OOM from a rough count (P ~ 12 L h^2, a dense
    Llama shape), not the MoE shape config.json gave the first plan."""
    cfg = yaml.safe_load((CONFIGS / "mixtral-8x7b.json").read_text())
    probed = from_config(cfg, name="mixtral")
    s = spec(method="auto", training={"gradientCheckpointing": True, "globalBatchSize": 8})
    pools_file = FIXTURES / "pools.yaml"
    first = plan(s, probed, load_pools(pools_file))
    assert first.method == "lora"
    first = first.model_copy(update={"micro_batch_size": 1, "gradient_accumulation_steps": 8})
    settings = Settings(pools_file=pools_file, discover_pools=False)
    reconciler = Reconciler(kube=None, settings=settings, progress=None)  # type: ignore[arg-type]
    body = {"metadata": {"name": "m", "namespace": "ns", "generation": 1}, "spec": {}}
    ctx = Ctx(body=body, now=_now(), status={"plan": first.to_k8s()})
    reconciler._replan_after_oom(ctx, s, "out of memory")
    replanned = Plan.model_validate(ctx.status["plan"])
    expected = plan(s.model_copy(update={"method": "qlora"}), probed, load_pools(pools_file))
    assert replanned.method == "qlora"
    assert replanned.trainable_parameters == expected.trainable_parameters
    assert replanned.predicted_peak_gi_b == expected.predicted_peak_gi_b
    assert to_spec(probed) == replanned.architecture
