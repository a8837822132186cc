"""Data preparation: kubetune's pipeline against TRL's own, on the same rows, side by side.

The same synthetic multi-turn chats (system prompt + 1-3 user/assistant pairs) and the
same locally built tiny tokenizer (no downloads), with the ChatML template variant that
has `{% generation %}` markers (`tests/fixtures/chat_templates.py`: TRL's
`assistant_only_loss` needs them; it renders the same text as the plain ChatML one):

- **TRL**: `SFTTrainer._prepare_dataset` — the code an `SFTTrainer` runs on its train set —
  with `assistant_only_loss=True`, `packing=True`, `packing_strategy="bfd"`,
  `max_length`, `dataset_num_proc`; called on a trainer object that holds only the
  attributes that method reads (no model is built);
- **kubetune**: the pipeline's tokenise stage (assistant-only labels, fit to maxSeqLength)
  followed by its best-fit-decreasing packing;
- **reference line**: a bare `Dataset.map(apply_chat_template(tokenize=True))` per row
  (tokens only: no masks, no packing).

Before any timing counts, the outputs are compared and the run fails (exit 1) when they
differ: per conversation, kubetune's token ids and labels must equal TRL's (unpacked,
`packing=False`), and the packed splits must hold the same examples (TRL packs best-fit-
decreasing within each 1,000-row `map` batch, kubetune over the whole split, so the
bins differ; the examples in them, ids and labels, must not).

One-process figures run pinned to one core (RAYON_NUM_THREADS=1), repetitions
interleaved, medians reported; the process-scaling figure runs kubetune (and TRL) with
`num_proc` 1 and 2 on two cores. Then a per-stage profile of kubetune's whole `prepare()`.

Run: `PYTHONPATH=operator:trainer-image:. python benchmarks/data_pipeline.py
[--rows 3000] [--repeats 5] [--scale-rows 12000] [--json out.json] [--smoke]`
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers' batch encoding: one core
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
MAX_LEN = 512


def pin(cores: int) -> None:
    """Run this process (and the workers it forks afterwards) on the first `cores` cores."""
    if CORES:
        os.sched_setaffinity(0, set(CORES[:cores]))


def rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Multi-turn chats (system + 1-3 user/assistant pairs) of the tiny task's vocabulary."""
    from tests.fixtures.tiny_model import make_instruction_rows

    base = make_instruction_rows(1024, seed)
    rng = random.Random(seed)
    out = []
    for i in range(n):
        turns = [base[(i * 3 + k) % len(base)]["messages"] for k in range(rng.randint(1, 3))]
        messages = [turns[0][0]] + [m for t in turns for m in t[1:]]
        out.append({"messages": messages})
    return out


class Bench:
    """The tokenizer, the spec and both sides' inputs for one row count."""

    def __init__(self, tmp: Path, tokenizer_dir: Path, data: list[dict[str, Any]]) -> None:
        import datasets
        from transformers import AutoTokenizer

        from kubetune.api.spec import FineTuneJobSpec

        self.tmp = tmp
        self.configs: dict[tuple[int | None, bool], Any] = {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        self.spec = FineTuneJobSpec.model_validate(
            {
                "model": {"path": "/m"},
                "dataset": {"train": {"path": f"{tmp}/train.jsonl"}},
                "training": {"maxSeqLength": MAX_LEN, "packing": True},
            }
        )
        n = len(data)
        # both sides read memory-mapped Arrow files, as the pipeline's stages do (and as
        # `load_dataset` gives TRL), so worker processes get file references, not copies
        plain = datasets.Dataset.from_list(data)
        normalised = datasets.Dataset.from_dict(
            {
                "file": ["bench"] * n,
                "line": list(range(1, n + 1)),
                "kind": ["chat"] * n,
                "example": [json.dumps(r) for r in data],
            }
        )
        tag = f"{n}-{id(self)}"
        plain.save_to_disk(str(tmp / f"plain-{tag}"))
        normalised.save_to_disk(str(tmp / f"normalised-{tag}"))
        self.plain = datasets.load_from_disk(str(tmp / f"plain-{tag}"))
        self.normalised = datasets.load_from_disk(str(tmp / f"normalised-{tag}"))

    # ------------------------------------------------------------------ the three sides
    def bare(self) -> Any:
        tokenizer = self.tokenizer

        def fn(example: dict[str, Any]) -> dict[str, Any]:
            ids = tokenizer.apply_chat_template(example["messages"], tokenize=True)
            return {"input_ids": ids["input_ids"] if isinstance(ids, dict) else ids}

        return self.plain.map(fn, remove_columns=["messages"])

    def trl_config(self, num_proc: int | None, packing: bool) -> Any:
        """The SFTConfig (built once per setting, outside the timed region)."""
        from trl import SFTConfig

        key = (num_proc, packing)
        if key not in self.configs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                self.configs[key] = SFTConfig(
                    output_dir=str(self.tmp / "trl"),
                    max_length=MAX_LEN,
                    packing=packing,
                    packing_strategy="bfd",
                    assistant_only_loss=True,
                    completion_only_loss=None,
                    dataset_num_proc=num_proc,
                    use_cpu=True,
                    bf16=False,
                    report_to=[],
                )
        return self.configs[key]

    def trl(self, num_proc: int | None = None, packing: bool = True) -> Any:
        """TRL's own preparation (see the module doc)."""
        from trl.chat_template_utils import get_training_chat_template, has_generation_markers
        from trl.trainer.sft_trainer import SFTTrainer

        args = self.trl_config(num_proc, packing)
        trainer = SFTTrainer.__new__(SFTTrainer)
        tok = self.tokenizer
        # what SFTTrainer.__init__ sets before it calls _prepare_dataset, for this data
        trainer._tokenizer = tok
        trainer.chat_template = (
            None if has_generation_markers(tok.chat_template) else get_training_chat_template(tok)
        )
        trainer.completion_only_loss = False  # "messages" rows: not prompt-completion
        return trainer._prepare_dataset(self.plain, tok, args, packing, None, "train")

    def kubetune(self, num_proc: int | None = None) -> tuple[Any, Any]:
        """(tokenised split, packed split): the pipeline's tokenise + mask + pack."""
        from kubetune_trainer.data.packing import pack
        from kubetune_trainer.data.pipeline import Pipeline

        pipeline = Pipeline(self.spec, self.tokenizer, str(self.tmp / "cache"), num_proc)
        tokenised = pipeline.tokenise(self.normalised, "train")
        packed, _ = pack(tokenised, MAX_LEN)
        return tokenised, packed


# ---------------------------------------------------------------------- equality
class Mismatch(AssertionError):
    """kubetune's ids/labels differ from TRL's: the speed comparison would be meaningless."""


def check_equal(bench: Bench, num_proc: int | None = None) -> dict[str, int]:
    """Row by row before packing, example multisets after; raises Mismatch."""
    tokenised, packed = bench.kubetune(num_proc)
    theirs = bench.trl(num_proc, packing=False)
    if len(tokenised) != len(theirs):
        raise Mismatch(f"kubetune kept {len(tokenised)} conversations, TRL {len(theirs)}")
    masked = 0
    for i, (a, b) in enumerate(zip(tokenised, theirs, strict=True)):
        if a["input_ids"] != b["input_ids"]:
            raise Mismatch(f"row {i}: token ids differ:\n{a['input_ids']}\n{b['input_ids']}")
        if a["labels"] != b["labels"]:
            raise Mismatch(f"row {i}: labels differ:\n{a['labels']}\n{b['labels']}")
        masked += sum(1 for x in a["labels"] if x == -100)
    if masked == 0 or masked == sum(len(x) for x in tokenised["input_ids"]):
        raise Mismatch("labels mask nothing or everything: the check would prove nothing")
    ours_packed = _examples_kubetune(packed)
    theirs_packed = _examples_trl(bench.trl(num_proc, packing=True))
    pairs = zip(theirs["input_ids"], theirs["labels"], strict=True)
    unpacked = Counter(_pair(a, b) for a, b in pairs)
    if ours_packed != theirs_packed or ours_packed != unpacked:
        raise Mismatch(
            f"packed splits hold different examples: kubetune {sum(ours_packed.values())},"
            f" TRL {sum(theirs_packed.values())}, unpacked {sum(unpacked.values())}"
        )
    return {"rows": len(tokenised), "packedKubetune": len(packed), "maskedTokens": masked}


def _pair(ids: list[int], labels: list[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(ids), tuple(labels)


def _examples_kubetune(packed: Any) -> Counter[Any]:
    """Packed rows split back into examples where position_ids restart."""
    out: Counter[Any] = Counter()
    for row in packed:
        starts = [i for i, p in enumerate(row["position_ids"]) if p == 0] + [len(row["input_ids"])]
        for a, b in itertools.pairwise(starts):
            out[_pair(row["input_ids"][a:b], row["labels"][a:b])] += 1
    return out


def _examples_trl(packed: Any) -> Counter[Any]:
    """Packed rows split back into examples by TRL's seq_lengths."""
    out: Counter[Any] = Counter()
    for row in packed:
        at = 0
        for n in row["seq_lengths"]:
            out[_pair(row["input_ids"][at : at + n], row["labels"][at : at + n])] += 1
            at += n
    return out


# ---------------------------------------------------------------------- timing
def cpu_seconds() -> tuple[float, float]:
    """CPU time of this process and of its finished children (the map workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], Any]) -> dict[str, float]:
    """Wall seconds, and CPU seconds of this process and of its workers."""
    cpu0 = cpu_seconds()
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    cpu1 = cpu_seconds()
    return {"wall": wall, "cpu": cpu1[0] - cpu0[0], "workers": cpu1[1] - cpu0[1]}


def interleaved(
    runs: dict[str, Callable[[], Any]], repeats: int
) -> dict[str, list[dict[str, float]]]:
    """Timings per run, the runs interleaved so that load changes hit all of them."""
    times: dict[str, list[dict[str, float]]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    return times


def median(times: list[dict[str, float]], key: str) -> float:
    return statistics.median(t[key] for t in times)


def per_second(n: int, times: list[dict[str, float]], key: str = "wall") -> float:
    return round(n / median(times, key), 1)


def critical_path(times: list[dict[str, float]], workers: int) -> float:
    """CPU seconds on the longest path if every process had a core of its own: the
    parent's own time plus one worker's share (the shards are equal)."""
    return median(times, "cpu") + (median(times, "workers") / workers if workers > 1 else 0)


def rounded(times: dict[str, list[dict[str, float]]]) -> dict[str, list[dict[str, float]]]:
    return {k: [{m: round(x, 3) for m, x in t.items()} for t in v] for k, v in times.items()}


# ---------------------------------------------------------------------- stage profile
@contextlib.contextmanager
def stage_timer() -> Iterator[dict[str, float]]:
    """Seconds spent in each stage of `prepare()`, by wrapping the functions it calls."""
    from datasets import DatasetDict

    from kubetune_trainer.data import cleaning, fertility, masking, pipeline, split

    seconds: dict[str, float] = defaultdict(float)
    wrapped: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, stage: str) -> None:
        real = getattr(owner, name)

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                seconds[stage] += time.perf_counter() - start

        wrapped.append((owner, name, real))
        setattr(owner, name, timed_call)

    P = pipeline.Pipeline
    wrap(P, "load", "load + normalise")
    wrap(P, "scan_pii", "PII scan")
    wrap(P, "dedup", "dedup (exact + near)")
    wrap(split, "split_indices", "split")
    wrap(cleaning, "NgramIndex", "contamination index")
    wrap(P, "decontaminate", "contamination check")
    wrap(P, "tokenise", "tokenise stage (all)")
    wrap(masking, "texts_and_spans", "  render + locate assistant spans")
    wrap(pipeline, "encode", "  render + tokenise + mask (encode)")
    wrap(P, "keep_usable", "  status bookkeeping")
    wrap(pipeline, "pack", "pack")
    wrap(pipeline.report, "content_hash", "content hash")
    wrap(pipeline.report, "length_stats", "length statistics")
    wrap(fertility, "fertility", "fertility check")
    wrap(DatasetDict, "save_to_disk", "save")
    try:
        yield seconds
    finally:
        for owner, name, real in reversed(wrapped):
            setattr(owner, name, real)


def stage_profile(bench: Bench, data: list[dict[str, Any]]) -> dict[str, Any]:
    from kubetune_trainer.data.pipeline import prepare

    Path(f"{bench.tmp}/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
    tok_dir = bench.tmp / "tok"
    out = bench.tmp / "prepared"
    with stage_timer() as seconds:
        start = time.perf_counter()
        prepare(bench.spec, tok_dir, out)
        total = time.perf_counter() - start
    stages = {k: round(v, 3) for k, v in seconds.items()}
    stages["total"] = round(total, 3)
    return {"rows": len(data), "seconds": stages, "perSecond": round(len(data) / total, 1)}


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scale-rows", type=int, default=12000)
    parser.add_argument("--scale-repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--smoke", action="store_true", help="few rows, one repeat")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rows, args.repeats, args.scale_rows, args.scale_repeats = 120, 1, 240, 1

    import datasets

    from tests.fixtures.chat_templates import build_generation_tokenizer

    datasets.disable_progress_bars()
    datasets.disable_caching()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    load_before = os.getloadavg()
    result: dict[str, Any] = {"date": started, "loadBefore": [round(x, 2) for x in load_before]}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tok_dir = build_generation_tokenizer(tmp / "tok")

        pin(1)
        data = rows(args.rows)
        bench = Bench(tmp, tok_dir, data)
        result["equality"] = check_equal(bench)
        one = interleaved(
            {"bare": bench.bare, "trl": bench.trl, "kubetune": bench.kubetune}, args.repeats
        )
        rates = {k: per_second(args.rows, v) for k, v in one.items()}
        cpu_rates = {k: per_second(args.rows, v, "cpu") for k, v in one.items()}
        result["oneCore"] = {
            "rows": args.rows,
            "repeats": args.repeats,
            "perSecond": rates,
            "kubetuneOverTrl": round(rates["kubetune"] / rates["trl"], 2),
            "kubetuneOverBare": round(rates["kubetune"] / rates["bare"], 2),
            "perCpuSecond": cpu_rates,
            "kubetuneOverTrlCpu": round(cpu_rates["kubetune"] / cpu_rates["trl"], 2),
            "times": rounded(one),
        }

        pin(2)
        big = Bench(tmp, tok_dir, rows(args.scale_rows, seed=1))
        result["equalityTwoProcesses"] = check_equal(big, num_proc=2)
        scale = interleaved(
            {
                "kubetune-1": lambda: big.kubetune(1),
                "kubetune-2": lambda: big.kubetune(2),
                "trl-1": lambda: big.trl(None),
                "trl-2": lambda: big.trl(2),
            },
            args.scale_repeats,
        )
        srates = {k: per_second(args.scale_rows, v) for k, v in scale.items()}
        paths = {
            k: round(critical_path(v, 2 if k.endswith("2") else 1), 3) for k, v in scale.items()
        }
        result["twoProcesses"] = {
            "rows": args.scale_rows,
            "repeats": args.scale_repeats,
            "cores": len(CORES[:2]),
            "perSecond": srates,
            "kubetune2over1": round(srates["kubetune-2"] / srates["kubetune-1"], 2),
            "trl2over1": round(srates["trl-2"] / srates["trl-1"], 2),
            "kubetune2OverTrl2": round(srates["kubetune-2"] / srates["trl-2"], 2),
            "criticalPathCpuSeconds": paths,
            "kubetune2over1Cpu": round(paths["kubetune-1"] / paths["kubetune-2"], 2),
            "trl2over1Cpu": round(paths["trl-1"] / paths["trl-2"], 2),
            "times": rounded(scale),
        }

        pin(1)
        result["stages"] = stage_profile(bench, data)
    result["loadAfter"] = [round(x, 2) for x in os.getloadavg()]
    import tokenizers
    import transformers
    import trl

    result["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "datasets": datasets.__version__,
        "trl": trl.__version__,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except Mismatch as err:
        print(f"MISMATCH: kubetune's ids/labels differ from TRL's: {err}", file=sys.stderr)
        sys.exit(1)
