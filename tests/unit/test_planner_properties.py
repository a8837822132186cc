"""Properties that must hold for any job and cluster (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.planner import PlanRefused, auto_methods, plan
from kubetune.planner import calibration as cal
from kubetune.planner.memory import LOADING, Strategy, estimate
from kubetune.planner.methods import policy
from kubetune.planner.shape import Request

from .test_planner_helpers import arch, pool, spec

MODELS = ["llama-3.2-1b", "qwen2.5-7b", "llama-3.1-8b", "mixtral-8x7b", "llama-3.1-70b"]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seq_lens = st.sampled_from([256, 512, 1024, 2048, 4096, 8192])
methods = st.sampled_from(["full", "lora", "qlora", "prompt-tuning", "prefix-tuning", "ia3"])


def _invasiveness(method: str, dataset_size: int | None) -> int:
    return auto_methods(dataset_size).index(method)


@SETTINGS
@given(
    model=st.sampled_from(MODELS),
    small=st.floats(8, 160),
    extra=st.floats(0, 120),
    seq=seq_lens,
    dataset=st.sampled_from([None, 1_000, 100_000]),
    per_node=st.sampled_from([1, 2, 4, 8]),
)
def test_more_gpu_memory_never_yields_a_more_invasive_method(
    model: str, small: float, extra: float, seq: int, dataset: int | None, per_node: int
) -> None:
    s = spec(training={"maxSeqLength": seq})
    a = arch(model)

    def method(gib: float) -> int | None:
        try:
            return _invasiveness(
                plan(s, a, [pool(gib=gib, per_node=per_node)], dataset).method, dataset
            )
        except PlanRefused:
            return None

    less, more = method(small), method(small + extra)
    if less is not None:
        assert more is not None and more <= less


@SETTINGS
@given(
    model=st.sampled_from(MODELS),
    method=methods,
    seq=seq_lens,
    micro=st.integers(1, 8),
    rank=st.sampled_from([4, 8, 16, 64, 256]),
    ckpt=st.booleans(),
    stage=st.sampled_from([Strategy(0), Strategy(2), Strategy(3), Strategy(3, "optimizer")]),
)
def test_memory_grows_with_sequence_batch_and_rank(
    model: str, method: str, seq: int, micro: int, rank: int, ckpt: bool, stage: Strategy
) -> None:
    a = arch(model)
    pol = policy(method)

    def total(seq_len: int, mb: int, r: int) -> float:
        lora = {"r": r} if method in ("lora", "qlora") else None
        s = spec(method=method, lora=lora, training={"maxSeqLength": seq_len})
        req = Request(a, pol, s, pol.trainable(a, s))
        est = estimate(req.workload("bf16", ckpt, mb), stage, 4, 1)
        # The training peak; QLoRA under ZeRO-3 may peak while loading instead, which
        # does not depend on the batch (`loading` is its excess over training).
        return est.total - est.terms.get(LOADING, 0.0)

    base = total(seq, micro, rank)
    assert total(seq * 2, micro, rank) > base
    assert total(seq, micro + 1, rank) > base
    assert total(seq, micro, rank * 2) >= base


@SETTINGS
@given(
    model=st.sampled_from(MODELS),
    method=st.sampled_from(["auto", "full", "lora", "qlora", "ia3"]),
    seq=seq_lens,
    gbs=st.sampled_from([1, 8, 16, 24, 64, 256]),
    gib=st.sampled_from([22.5, 45.0, 79.6, 141.0]),
    per_node=st.sampled_from([1, 4, 8]),
    nodes=st.integers(1, 4),
    fraction=st.sampled_from([0.8, 0.9, 0.95]),
)
def test_the_chosen_shape_fits_its_own_prediction(
    model: str,
    method: str,
    seq: int,
    gbs: int,
    gib: float,
    per_node: int,
    nodes: int,
    fraction: float,
) -> None:
    s = spec(
        method=method,
        training={"maxSeqLength": seq, "globalBatchSize": gbs},
        resources={"maxGPUMemoryFraction": fraction},
    )
    try:
        p = plan(s, arch(model), [pool(gib=gib, per_node=per_node, nodes=nodes)])
    except PlanRefused as refused:
        assert refused.reason
        return
    assert p.predicted_peak_gi_b <= fraction * gib + 0.01
    assert p.headroom_gi_b >= -0.01
    assert p.micro_batch_size * p.gradient_accumulation_steps * p.total_gpus == gbs
    assert p.total_gpus == p.nodes * p.gpus_per_node <= per_node * nodes
    assert 1 <= p.micro_batch_size <= cal.MAX_MICRO_BATCH
