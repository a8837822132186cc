"""Planner calibration: measured peak GPU memory beside the planner's prediction.

On a GPU, runs a grid of short trainings through kubetune's trainer path
(`bench.run_one`, side `kubetune`, packed rows of exactly maxSeqLength tokens, one GPU,
no ZeRO) over (model size, method, sequence length, micro-batch, checkpointing), and
records for each point the planner's estimate (`kubetune.planner.memory.estimate` through
`bench.planner_estimate`, term by term) and the measured peak:

    measured_peak_gib = torch.cuda.max_memory_reserved()
                        + (device memory in use - memory_reserved) at the end of the run

i.e. what the caching allocator held at its peak plus what the process holds outside it
(CUDA context, cuBLAS workspaces), which is what the planner's total (context included)
predicts. `measured_allocated_gib` (max_memory_allocated) is kept beside it.

Output: `benchmarks/gpu/results/calibration-<gpu>.json`.
`tests/unit/test_planner_calibration_replay.py` replays every such file against the
current planner (`replay()` below) and fails when a GPU point is off by more than ±10 %;
put a factor in `kubetune.planner.calibration.CORRECTIONS` rather than editing formulas.

`--smoke` runs a tiny grid on the CPU to exercise the same code; its peak is the process
RSS delta, which the planner does not model (fp32 on CPU, no CUDA context, library
allocations of the same order as the model), so smoke records are replayed for structure
only and never checked against the tolerance.

    PYTHONPATH=operator:trainer-image:. python benchmarks/gpu/calibrate.py [--sizes 1b,3b,8b]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.gpu import bench  # noqa: E402

TOLERANCE = 0.10
GiB = bench.GiB


# ----------------------------------------------------------------------------- replay
def predict(case: dict[str, Any]) -> Any:
    """The current planner's estimate for a recorded grid point."""
    inp = case["inputs"]
    return bench.planner_estimate(
        inp["model_config"],
        inp["method"],
        int(inp["seq_len"]),
        int(inp["micro_batch"]),
        bool(inp["checkpointing"]),
        inp["precision"],
    )


def is_gpu_record(doc: dict[str, Any]) -> bool:
    return bool(doc.get("device", {}).get("cuda")) and doc.get("kind") != "smoke"


def replay(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measured point of `doc` with the current prediction and its relative error
    (predicted - measured) / measured."""
    rows = []
    for case in doc["cases"]:
        measured = case.get("measured_peak_gib")
        if measured is None:  # CPU smoke records: the process RSS delta
            measured = case.get("measured_rss_delta_gib")
        if case.get("status") != "ok" or measured is None:
            continue
        predicted = predict(case).total / GiB
        measured = float(measured)
        rows.append(
            {
                "point": point_name(case["inputs"]),
                "predicted_gib": round(predicted, 3),
                "measured_gib": measured,
                "error": (predicted - measured) / measured if measured > 0 else None,
            }
        )
    return rows


def failures(doc: dict[str, Any], tolerance: float = TOLERANCE) -> list[str]:
    """The points whose prediction is off by more than `tolerance`, described."""
    return [
        f"{r['point']}: predicted {r['predicted_gib']:.2f} GiB, measured"
        f" {r['measured_gib']:.2f} GiB"
        f" ({'no measurement' if r['error'] is None else format(r['error'], '+.1%')})"
        for r in replay(doc)
        if r["error"] is None or abs(r["error"]) > tolerance
    ]


def point_name(inp: dict[str, Any]) -> str:
    return (
        f"{inp['size']}/{inp['method']}/s{inp['seq_len']}/mb{inp['micro_batch']}"
        f"/ckpt-{'on' if inp['checkpointing'] else 'off'}/{inp['precision']}"
    )


def synthetic_record(
    model_config: dict[str, Any], points: list[dict[str, Any]], factor: float
) -> dict[str, Any]:
    """A GPU-shaped record whose 'measured' peaks are the planner's prediction x factor
    (for testing the replay machinery without a GPU)."""
    cases = []
    for p in points:
        inputs = {"size": "synthetic", "model_config": model_config, **p}
        predicted = predict({"inputs": inputs}).total / GiB
        cases.append(
            {
                "inputs": inputs,
                "status": "ok",
                "predicted_gib": predicted,
                "measured_peak_gib": predicted * factor,
            }
        )
    return {"kind": "synthetic", "device": {"cuda": True, "gpu": "synthetic"}, "cases": cases}


# ----------------------------------------------------------------------------- grid
def run_grid(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not a.smoke:
        raise SystemExit("no CUDA device: run with --smoke on a CPU")
    base = bench.Settings(
        smoke=a.smoke,
        sizes=["smoke"] if a.smoke else a.sizes.split(","),
        methods=a.methods.split(","),
        steps=a.steps,
        warmup=a.warmup,
        seq_len=0,
        micro_batch=1,
        median_len=0,
        sigma=0.8,
        isolate=cuda and not a.in_process,
    )
    seqs = (
        [int(x) for x in a.seq_lens.split(",")]
        if a.seq_lens
        else ([128] if a.smoke else [1024, 4096])
    )
    micros = [int(x) for x in a.micro_batches.split(",")]
    ckpts = [x == "on" for x in a.checkpointing.split(",")]
    precision = "bf16" if cuda else "fp32"
    info = bench.device_info()
    budget = torch.cuda.get_device_properties(0).total_memory if cuda else None
    cases: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        root = (
            Path(a.workdir)
            if a.workdir
            else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        )
        for size in base.sizes:
            for seq in seqs:
                # lengths long enough that packed rows are full: the planner assumes
                # micro_batch x seq_len tokens per step
                s = replace(
                    base, seq_len=seq, median_len=max(16, seq // 4), micro_batch=max(micros)
                )
                ws = bench.Workspace.build(root / f"{size}-{seq}", size, s, cuda)
                for method, mb, ck in itertools.product(base.methods, micros, ckpts):
                    inputs = {
                        "size": size,
                        "model_config": ws.model_config,
                        "method": method,
                        "seq_len": seq,
                        "micro_batch": mb,
                        "checkpointing": ck,
                        "precision": precision,
                    }
                    est = predict({"inputs": inputs})
                    case: dict[str, Any] = {
                        "inputs": inputs,
                        "predicted_gib": round(est.total / GiB, 3),
                        "predicted_terms_gib": est.gib(),
                    }
                    if budget and est.total > 1.05 * budget:
                        case |= {"status": "skipped", "reason": "predicted above GPU memory"}
                    else:
                        spec = bench.RunSpec(
                            size,
                            method,
                            "kubetune",
                            checkpointing="on" if ck else "off",
                            micro_batch=mb,
                        )
                        run = bench.run_isolated if s.isolate else bench.run_one
                        r = run(ws, spec, replace(s, micro_batch=mb))
                        case |= {
                            "status": r.status,
                            "reason": r.reason,
                            "measured_peak_gib": r.device_peak_gib,
                            "measured_allocated_gib": r.peak_allocated_gib,
                            "measured_reserved_gib": r.peak_reserved_gib,
                            "measured_rss_delta_gib": r.rss_delta_gib,
                            "padding_fraction": r.padding_fraction,
                            "tokens_per_s": r.tokens_per_s,
                        }
                    cases.append(case)
                    print(
                        point_name(inputs),
                        case.get("status"),
                        case.get("predicted_gib"),
                        case.get("measured_peak_gib") or case.get("measured_rss_delta_gib"),
                        flush=True,
                    )
    label = bench.device_label(info, a.smoke)
    return {
        "kind": "smoke" if a.smoke else "calibration",
        "note": (
            "CPU smoke: RSS deltas, not comparable with the planner's GPU model; replayed for"
            " structure only"
            if a.smoke
            else ""
        ),
        "label": label,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": info,
        "versions": bench.versions(),
        "settings": {k: v for k, v in asdict(base).items() if k not in ("workdir",)},
        "measured": "measured_peak_gib = max_memory_reserved + non-allocator device memory",
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--sizes", default="1b,3b,8b")
    p.add_argument("--methods", default="lora,qlora,full")
    p.add_argument("--seq-lens", default="", help="(1024,4096; smoke 128)")
    p.add_argument("--micro-batches", default="1,4")
    p.add_argument("--checkpointing", default="off,on")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--in-process", action="store_true")
    p.add_argument("--workdir", default="")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    import datasets

    datasets.disable_progress_bars()
    doc = run_grid(a)
    out = Path(a.out) if a.out else bench.RESULTS / f"calibration-{doc['label']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    if is_gpu_record(doc):
        for row in replay(doc):
            err = "n/a" if row["error"] is None else f"{row['error']:+.1%}"
            print(
                f"{row['point']}: {row['predicted_gib']:.2f} vs {row['measured_gib']:.2f} GiB"
                f" ({err})"
            )
        bad = failures(doc)
        print(f"{len(bad)} point(s) outside ±{TOLERANCE:.0%}")
    print(f"results: {out}")
    return doc


if __name__ == "__main__":
    main()
