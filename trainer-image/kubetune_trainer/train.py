"""Fine-tune one FineTuneJob on this process's rank: `python -m kubetune_trainer train --config F`.

The recipe reads top to bottom: validate (in __init__) → setup (outputs writable, seed,
model files, tokenizer, data, model, baselines, trainer) → train (resuming from the newest
complete checkpoint, then loading the best checkpoint back) → save (adapter or model,
merged weights) → evaluate (tuned vs baselines, forgetting, the gate, overfitting, loss
curve, report, model card) → publish (object store, Hub). The objective (sft, dpo, orpo)
only changes which TRL trainer runs. Every exit, good or bad, leaves a TerminationSummary
in the termination log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from kubetune.api.common import ModelSource
from kubetune.api.status import (
    Advice,
    CheckpointStatus,
    EvaluationStatus,
    OutputStatus,
    Progress,
)
from kubetune.api.trainer_config import TrainerConfig
from kubetune.contract import ExitCode, TerminationSummary

from . import (
    baselines,
    benchmarks,
    checkpoints,
    evaluation,
    gate,
    identity,
    outputs,
    plots,
    selection,
    storage,
)
from .config import RunPaths, load_config
from .distributed import Rank, World, deepspeed_config, load_dtype, training_precision
from .failures import BadInput, Preempted, classify
from .methods import Hardware, get_method
from .termination import write_termination_log

log = logging.getLogger("kubetune_trainer.train")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="trainer config file (default $KUBETUNE_CONFIG)")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
    except Exception as err:
        return _finish(Rank.from_env(), None, err)
    return run_training(config)


def run_training(config: TrainerConfig) -> int:
    """The whole run on this rank; returns the ExitCode (local rank 0 writes the summary)."""
    from .callbacks import Preemption

    rank = Rank.from_env()
    preemption = Preemption()
    preemption.install()
    recipe: FineTuneRecipe | None = None
    try:
        recipe = FineTuneRecipe(config, preemption)
        recipe.setup()
        recipe.train()
        recipe.save()
        recipe.evaluate()
        recipe.publish()
        error: BaseException | None = None
    except BaseException as err:  # KeyboardInterrupt too: it is a preemption here
        error = err
        if not isinstance(err, Exception | KeyboardInterrupt):
            raise
    finally:
        if recipe is not None:
            recipe.cleanup()
    return _finish(rank, recipe, error)


def _finish(rank: Rank, recipe: FineTuneRecipe | None, error: BaseException | None) -> int:
    if error is None:
        code, reason, message = ExitCode.OK, "Completed", "training completed"
    else:
        code, reason, message = classify(error)
        if code == ExitCode.ERROR:
            log.exception("training failed", exc_info=error)
        print(f"kubetune_trainer: {reason}: {message}", file=sys.stderr)
    summary = (
        recipe.summary(code, reason, message)
        if recipe is not None
        else TerminationSummary(exit_code=code, reason=reason, message=message)
    )
    if rank.is_local_main:
        write_termination_log(summary)
    return int(code)


class FineTuneRecipe:
    """One run of one FineTuneJob on this rank."""

    def __init__(self, config: TrainerConfig, preemption: Any) -> None:
        import torch

        self.config = config
        self.spec = config.spec
        self.plan = config.plan
        self.preemption = preemption
        self.rank = Rank.from_env()
        self.paths = RunPaths.of(config)
        storage.use_credentials(self.spec.object_stores())
        cuda = torch.cuda.is_available()
        self.hardware = Hardware(cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported())
        # Validate before anything expensive: a bad combination fails in a second.
        self.method = get_method(self.plan.method)
        self.capability = self.method.capability
        self.method.validate(self.spec, self.plan)
        if self.plan.micro_batch_size < 1 or self.plan.gradient_accumulation_steps < 1:
            raise BadInput("plan.microBatchSize and plan.gradientAccumulationSteps must be >= 1")
        # The ZeRO layout comes from the plan itself, never from how the process was
        # started: a plan with ZeRO always trains under DeepSpeed.
        self.deepspeed = deepspeed_config(self.plan, cuda)
        if self.deepspeed and self.plan.total_gpus == 1 and "WORLD_SIZE" not in os.environ:
            # `train` started by hand rather than by `launch`: DeepSpeed still needs a
            # process group, of one.
            os.environ.update(World.from_env(self.plan).rendezvous_env())
        self.precision = training_precision(self.plan, cuda, self.hardware.bf16)
        if self.precision != self.plan.precision and cuda:
            log.warning(
                "plan asks for %s; this GPU trains in %s", self.plan.precision, self.precision
            )
        # Filled in as the run goes, for the report and the termination summary.
        self.data_report: dict[str, Any] | None = None
        self.baseline: dict[str, Any] | None = None
        """Baselines (zeroShot, fewShot, previous) and the base model's forgetting figures."""
        self.final: dict[str, Any] | None = None
        self.evaluation: dict[str, Any] = {}
        """status.evaluation in its wire form."""
        self.advice: list[dict[str, Any]] = []
        self.watch = selection.watch(self.spec)
        self.best_loaded = False
        self.benchmark_items: dict[str, list[benchmarks.Item]] = {}
        self.train_metrics: dict[str, float] = {}
        self.output = OutputStatus()
        self.resumed_from: str | None = None
        self.trainer: Any = None
        self.train_history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch
        from accelerate import PartialState
        from transformers import AutoTokenizer, set_seed

        # 1. Every output destination writable: a wrong bucket or a read-only token fails
        #    now, not after hours of training (the operator already checked what it can).
        if self.rank.is_main:
            outputs.check_destinations(self.spec, self.paths.root)
        # 2. Seed python, numpy and torch (the Trainer reseeds its data order from it).
        set_seed(self.spec.training.seed)
        # 3. Training arguments; building them joins the process group (gloo on CPU,
        #    NCCL on GPU), after which ranks can wait for each other.
        self.args = self._training_args()
        self.state = PartialState()
        if self.rank.world_size > 1 and not self.hardware.cuda:
            torch.set_num_threads(max(1, (os.cpu_count() or 2) // self.rank.world_size))
        if self.deepspeed and not self.hardware.cuda:
            # With use_cpu the arguments build a plain gloo group and never start DeepSpeed's
            # comm layer (on GPUs they do), so ZeRO-3's zero.Init in from_pretrained would
            # see a world of 1; join it over the existing group.
            import deepspeed

            deepspeed.init_distributed(dist_backend="gloo")
        # 4. Base model files, and the tokenizer from them.
        from .models import resolve_model_dir

        with self.state.local_main_process_first():
            self.model_dir = resolve_model_dir(
                self.spec.model, self.config.paths.pvc_root, self.config.paths.scratch_dir
            )
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(
                self.model_dir, trust_remote_code=self.spec.model.trust_remote_code
            )
        except (OSError, ValueError) as err:
            raise BadInput(f"cannot load the tokenizer from {self.model_dir}: {err}") from err
        # 5. Data: the pipeline runs once per node; the other ranks load its output.
        self.splits = self._prepare_data()
        # 5b. The output directory's checkpoints and baseline.json are this job's (UID and
        #     spec hash), or moved aside before anything resumes or reads them.
        if self.state.is_main_process:
            moved = identity.claim(self.paths, self.config)
            if moved is not None:  # first: it names the DataWarning condition and Event
                self.advice.insert(0, moved)
        self.state.wait_for_everyone()
        # 6. The model, loaded the way the method needs (4-bit for QLoRA), SDPA attention.
        self.model = self._load_model()
        # 7. The baselines (before any adapter) and the benchmarks, kept across resumes.
        self._load_benchmarks()
        self._baseline()
        # 8. The Trainer for the objective, wrapping the model in the method's PEFT config.
        self.trainer = self._build_trainer()

    def _prepare_data(self) -> Any:
        from datasets import load_from_disk

        from .data.pipeline import prepare

        out = Path(self.config.paths.scratch_dir, "data")
        self.data_dir = out
        spec = self.spec
        if spec.training.packing and not self.capability.packing:
            log.info("method %s prepends virtual tokens: preparing unpacked rows", spec.method)
            spec = spec.model_copy(deep=True)
            spec.training.packing = False
        with self.state.local_main_process_first():
            if self.state.is_local_main_process:
                prepared = prepare(spec, self.model_dir, out)
                splits, report = prepared.splits, prepared.report
            else:
                splits = load_from_disk(str(out))
                report = json.loads((out / "data-report.json").read_text())
        self.data_report = report
        self.chat_template = (
            (out / "chat_template.jinja").read_text()
            if (out / "chat_template.jinja").is_file()
            else None
        )
        self.advice = list(report.get("advice") or [])
        if self.state.is_main_process:
            self.paths.root.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / "data-report.json", self.paths.data_report)
        if len(splits["train"]) == 0:
            raise BadInput(
                f"no training examples survived data preparation; see {self.paths.data_report}"
            )
        return splits

    def _load_model(self) -> Any:
        import torch
        from transformers import AutoModelForCausalLM

        dtype = getattr(torch, load_dtype(self.plan, self.hardware.cuda, self.hardware.bf16))
        kwargs = self.method.load_kwargs(self.spec, self.hardware, dtype, self.zero3)
        if self.capability.quantised_base and self.hardware.cuda:
            kwargs["device_map"] = {"": self.rank.local_rank}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self.model_dir,
                dtype=dtype,
                attn_implementation="sdpa",
                trust_remote_code=self.spec.model.trust_remote_code,
                **kwargs,
            )
        except (OSError, ValueError) as err:
            raise BadInput(f"cannot load the model from {self.model_dir}: {err}") from err
        return self.method.prepare_model(model, self.gradient_checkpointing, self.zero3)

    @property
    def zero3(self) -> bool:
        """ZeRO-3: every rank holds only a shard of each weight."""
        return bool(self.deepspeed) and self.plan.zero_stage == 3

    def _load_benchmarks(self) -> None:
        f = self.spec.evaluation.forgetting
        for bench in f.benchmarks if f is not None else []:
            cache = str(Path(self.config.paths.scratch_dir, "benchmarks", bench.name))
            self.benchmark_items[bench.name] = benchmarks.load(
                bench, cache, self.spec.dataset.split.seed
            )

    def _wants_baseline(self) -> bool:
        """The base model is scored for any comparison the spec asks for."""
        ev = self.spec.evaluation
        return (
            ev.compare_baseline
            or ev.few_shot is not None
            or ev.previous is not None
            or ev.forgetting is not None
        )

    def _baseline(self) -> None:
        if not self._wants_baseline():
            return
        if self.zero3:
            # zero.Init loaded the weights as shards, and gathering them whole on every
            # rank is exactly what ZeRO-3 cannot afford: the baseline is scored when training
            # begins (`sharded_baseline`), through the engine, which gathers a layer at a time.
            return
        if self.state.is_main_process:
            self._score_baseline(self.model)

    def sharded_baseline(self, model: Any, resumed: bool) -> None:
        """The baseline under ZeRO-3, at the start of training: every rank scores the same
        rows in step (the engine's gathers are collectives), rank 0 keeps the result. PEFT
        adapters are switched off, so this is the base model's score."""
        import contextlib

        import torch.distributed as dist

        known = [self.paths.baseline.is_file() if self.state.is_main_process else False]
        dist.broadcast_object_list(known, src=0)  # every rank takes the same branch
        if known[0]:
            if self.state.is_main_process:
                self._score_baseline(model)  # reads the earlier attempt's file
            return
        peft = hasattr(model, "disable_adapter")
        if resumed and not peft:
            log.warning("resumed before a baseline was saved: the base model's scores are lost")
            return
        with model.disable_adapter() if peft else contextlib.nullcontext():
            self._score_baseline(model, synced=True)

    def _score_baseline(self, model: Any, synced: bool = False) -> None:
        if self.paths.baseline.is_file():  # a resumed attempt: the base model has not changed
            loaded = json.loads(self.paths.baseline.read_text())
            # baseline.json of an older trainer held the zero-shot figures at the top level
            self.baseline = {"zeroShot": loaded} if "metrics" in loaded else loaded
            self._target_advice()
            return
        ev = self.spec.evaluation
        started = time.monotonic()
        base: dict[str, Any] = {}
        settings = self._settings(synced)
        # Under ZeRO-3 every rank runs these in step (the engine's gathers are collectives).
        scores = self._score(model, synced)  # validation, test, general text: one pass
        base["generalPerplexity"] = scores.general_perplexity
        if ev.compare_baseline:
            base["zeroShot"] = {
                "metrics": scores.metrics,
                "samples": scores.samples,
                "source": baselines.zero_shot_source(),
            }
        if ev.few_shot is not None:
            shots = baselines.load_shots(self.data_dir)
            found, samples = baselines.few_shot(
                model, self.tokenizer, shots, self.splits.get("test"), settings
            )
            base["fewShot"] = {
                "metrics": found,
                "samples": samples,
                "source": baselines.few_shot_source(shots, ev.few_shot.seed),
            }
        base["benchmarks"] = self._score_benchmarks(model, synced)
        if not self.state.is_main_process:
            return
        # The previous model is not sharded: rank 0 scores it alone.
        prev, why = baselines.previous_model(self.config)
        if prev is not None:
            base["previous"] = self._score_previous(prev)
        elif why:
            base["missing"] = {"previous": why}
        base["seconds"] = round(time.monotonic() - started, 2)
        self.baseline = base
        outputs.write_json(self.paths.baseline, base)
        log.info(
            "baselines: %s",
            {
                k: v.get("metrics")
                for k, v in base.items()
                if isinstance(v, dict) and "metrics" in v
            },
        )
        self._target_advice()

    def _score_previous(self, prev: Any) -> dict[str, Any]:
        import torch

        dtype = (
            next(self.model.parameters()).dtype
            if not self.capability.quantised_base
            else torch.float32
        )
        model = baselines.load_previous(
            prev,
            self.config.paths.pvc_root,
            self.config.paths.scratch_dir,
            dtype,
            self.spec.model.trust_remote_code,
        )
        model.to(next(self.model.parameters()).device)
        scores = self._score(model)
        del model
        baselines.release()
        return {"metrics": scores.metrics, "samples": scores.samples, "source": prev.description}

    def _score_benchmarks(self, model: Any, synced: bool = False) -> dict[str, Any]:
        return {
            name: {
                k: v
                for k, v in benchmarks.score(model, self.tokenizer, items, synced).items()
                if k != "loglikelihoods"
            }
            for name, items in self.benchmark_items.items()
        }

    def _target_advice(self) -> None:
        few = ((self.baseline or {}).get("fewShot") or {}).get("metrics")
        found = gate.target_advice(self.spec.evaluation, few)
        self.advice += found
        if found and self.state.is_main_process and self.paths.data_report.is_file():
            # the data report gets the score-based rules too: one place for the advice
            doc = json.loads(self.paths.data_report.read_text())
            doc["advice"] = self.advice
            outputs.write_json(self.paths.data_report, doc)

    def _settings(self, synced: bool = False) -> evaluation.Settings:
        ev = self.spec.evaluation
        return evaluation.Settings(
            metrics=ev.metrics,
            max_new_tokens=ev.max_new_tokens,
            max_samples=ev.max_test_samples,
            sample_generations=ev.sample_generations,
            synced=synced,
        )

    def _score(self, model: Any, synced: bool = False) -> evaluation.Scores:
        return evaluation.score(model, self.tokenizer, self.splits, self._settings(synced))

    def _eval_extras(self) -> dict[str, float]:
        """Figures added to every evaluation during training: the watched task metric on
        the validation prompts, and benchmark accuracy with forgetting.perEpoch."""
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        out: dict[str, float] = {}
        task = self.watch.task_metric
        prompts = self.splits.get("validation_prompts") or self.splits.get("validation")
        if task is not None and prompts is not None and "prompt_text" in prompts.column_names:
            s = self._settings(self.zero3)
            wanted = evaluation.Settings(
                metrics=[task],
                max_new_tokens=s.max_new_tokens,
                max_samples=s.max_samples,
                sample_generations=0,
                synced=s.synced,
            )
            found, _ = evaluation.generation_scores(
                model, self.tokenizer, prompts["prompt_text"], prompts["reference"], wanted
            )
            key = next(k for k, v in selection.TASK_KEY.items() if v == task)
            out[key] = found.get(task, 0.0)
        f = self.spec.evaluation.forgetting
        if f is not None and f.per_epoch:
            metric = {b.name: b.metric for b in f.benchmarks}
            for name, figures in self._score_benchmarks(model, self.zero3).items():
                out[f"benchmark_{name}"] = figures[metric[name]]
        return out

    def _training_args(self) -> Any:
        from trl import SFTConfig

        from . import preference

        t, ev = self.spec.training, self.spec.evaluation
        self.gradient_checkpointing = self.plan.gradient_checkpointing
        every = t.checkpoint.every_steps
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.paths.tensorboard)
        common: dict[str, Any] = dict(
            output_dir=str(self.paths.checkpoints),
            per_device_train_batch_size=self.plan.micro_batch_size,
            per_device_eval_batch_size=self.plan.micro_batch_size,
            gradient_accumulation_steps=self.plan.gradient_accumulation_steps,
            num_train_epochs=t.epochs,
            learning_rate=self.plan.learning_rate,
            lr_scheduler_type=t.lr_scheduler,
            warmup_steps=t.warmup_ratio,  # < 1: a fraction of the steps
            weight_decay=t.weight_decay,
            optim=self.method.optimizer(self.hardware),
            bf16=self.precision == "bf16",
            fp16=self.precision == "fp16",
            use_cpu=not self.hardware.cuda,
            ddp_backend="gloo" if not self.hardware.cuda and self.rank.world_size > 1 else None,
            deepspeed=self.deepspeed,
            gradient_checkpointing=self.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
            seed=t.seed,
            data_seed=t.seed,
            logging_steps=1,
            logging_nan_inf_filter=False,  # a NaN must reach the guard, not be averaged away
            eval_strategy=ev.strategy,
            eval_steps=ev.every_steps if ev.strategy == "steps" else None,
            save_strategy="steps" if every else "epoch",
            save_steps=every or 500,
            save_total_limit=None,  # rotation is ours: last K plus the best
            # the best evaluation by the watched metric; loading it back is ours too
            # (selection.restore_best), after the last step
            metric_for_best_model=self.watch.key if ev.strategy != "no" else None,
            greater_is_better=self.watch.greater_is_better,
            report_to=["tensorboard"],
            include_num_input_tokens_seen="non_padding",
            remove_unused_columns=False,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        if self.spec.objective != "sft":
            return preference.training_args(self.spec, common)
        return SFTConfig(
            **common,
            neftune_noise_alpha=t.neftune_noise_alpha,
            dataset_kwargs={"skip_prepare_dataset": True},
            max_length=None,
        )

    def _build_trainer(self) -> Any:
        from .callbacks import (
            BaselineCallback,
            EarlyStopping,
            EpochCheckpoint,
            KubetuneSFTTrainer,
            NaNGuard,
            PreemptionCallback,
            ProgressCallback,
            SaveOnEvaluate,
            preference_trainer,
        )
        from .collate import Collator, training_view
        from .progress import ProgressReporter

        t, args = self.spec.training, self.args
        has_validation = "validation" in self.splits and len(self.splits["validation"]) > 0
        if not has_validation:
            args.eval_strategy = "no"  # nothing to evaluate on; the run still trains
            args.metric_for_best_model = None
        eval_strategy = str(args.eval_strategy)
        every = t.checkpoint.every_steps
        self.reporter = (
            ProgressReporter.from_config(self.config)
            if self.state.is_main_process
            else ProgressReporter(None, None)
        )
        job = self.config.job
        self.progress = ProgressCallback(
            self.reporter, job.namespace, job.name, job.attempt, job.uid
        )
        callbacks: list[Any] = [NaNGuard(), PreemptionCallback(self.preemption), self.progress]
        if self.zero3 and self._wants_baseline():
            callbacks.append(BaselineCallback(self.sharded_baseline))
        if every:
            callbacks.append(EpochCheckpoint())
        if eval_strategy != "no":
            callbacks.append(SaveOnEvaluate())
        self.early_stopping = None
        es = t.early_stopping
        if es is not None and es.enabled and eval_strategy != "no":
            w = self.watch
            self.early_stopping = EarlyStopping(
                w.key, w.greater_is_better, es.patience, es.threshold
            )
            callbacks.append(self.early_stopping)
        peft_config = self.method.peft_config(self.spec, self.model_dir)
        if self.spec.objective == "sft":
            trainer = KubetuneSFTTrainer(
                model=self.model,
                args=args,
                train_dataset=training_view(self.splits["train"]),
                eval_dataset=training_view(self.splits["validation"]) if has_validation else None,
                processing_class=self.tokenizer,
                data_collator=Collator(self.tokenizer.pad_token_id),
                peft_config=peft_config,
                callbacks=callbacks,
            )
        else:
            from .preference import trl_rows

            if self.chat_template:  # TRL renders the pairs: with the data report's template
                self.tokenizer.chat_template = self.chat_template
            trainer = preference_trainer(self.spec.objective)(
                model=self.model,
                args=args,
                train_dataset=trl_rows(self.splits["train"]),
                eval_dataset=trl_rows(self.splits["validation"]) if has_validation else None,
                processing_class=self.tokenizer,
                peft_config=peft_config,
                callbacks=callbacks,
            )
        trainer.keep_checkpoints = t.checkpoint.keep
        trainer.extra_metrics = self._eval_extras
        if self.spec.objective != "sft":
            from kubetune.api.spec import PreferenceSpec

            pref = self.spec.preference or PreferenceSpec()
            self.preference_info = {
                "objective": self.spec.objective,
                "beta": pref.beta,
                "lossType": pref.loss_type if self.spec.objective == "dpo" else None,
                "reference": (
                    "none"
                    if self.spec.objective == "orpo"
                    else "a second frozen copy of the base"
                    if getattr(trainer, "ref_model", None) is not None
                    else "the base, adapter disabled"
                ),
            }
        return trainer

    # ------------------------------------------------------------------ train
    def train(self) -> None:
        root = self.paths.checkpoints
        if self.state.is_main_process:
            for leftover in checkpoints.clean_incomplete(root):
                log.info("removed incomplete checkpoint %s", leftover)
        self.state.wait_for_everyone()
        latest = checkpoints.latest(root)
        self.resumed_from = str(latest.path) if latest else self._resume_from()
        if self.resumed_from:
            log.info("resuming from %s", self.resumed_from)
        result = self.trainer.train(resume_from_checkpoint=self.resumed_from)
        # the evaluations of the run (a later trainer.evaluate() logs into the same history)
        self.train_history = list(self.trainer.state.log_history)
        self.train_metrics = {
            k: float(v) for k, v in result.metrics.items() if isinstance(v, int | float)
        }
        if self.progress.tokens_per_second:
            self.train_metrics["tokens_per_second"] = self.progress.tokens_per_second
        if self.preemption.handled:
            saved = checkpoints.latest(root)
            raise Preempted(
                f"SIGTERM at step {self.trainer.state.global_step};"
                f" checkpoint {saved.path.name if saved else 'none'} saved, the next attempt"
                " resumes from it"
            )
        if self.spec.training.load_best_at_end:
            # what is exported and evaluated is the best evaluation's checkpoint, not the
            # last step's (every rank: under ZeRO-3 the engine loads its own shards)
            self.best_loaded = selection.restore_best(self.trainer)

    def _resume_from(self) -> str | None:
        """spec.training.resumeFrom, when this job has no checkpoint of its own yet: the
        checkpoint the user named (downloaded once per node from an object store)."""
        src = self.spec.training.resume_from
        if src is None:
            return None
        from .model_source import describe, resolve

        # A checkpoint in this output directory may have been moved aside as another
        # job's (identity.claim): the user named it, so it is used where it now is.
        pvc, pvc_root = src.pvc, self.config.paths.pvc_root
        if pvc is not None:
            local = Path(pvc_root, pvc.claim_name, pvc.path.lstrip("/"))
            src = ModelSource(path=str(identity.relocated(local)))
        elif src.path is not None:
            src = ModelSource(path=str(identity.relocated(Path(src.path))))
        scratch = Path(self.config.paths.scratch_dir, "resume-from")
        with self.state.local_main_process_first():
            where = resolve(src, scratch, pvc_root_dir=self.config.paths.pvc_root)
        if not (where / checkpoints.STATE_FILE).is_file():
            raise BadInput(
                f"spec.training.resumeFrom: {describe(src)} is not a checkpoint (no"
                f" {checkpoints.STATE_FILE} in {where}); name a checkpoint-N directory"
            )
        return str(where)

    # ------------------------------------------------------------------ save
    def save(self) -> None:
        full = self.capability.trains_base_weights
        target = self.paths.model if full else self.paths.adapter
        self.trainer.save_model(str(target))  # every rank: ZeRO-3 gathers the weights
        if not self.state.is_main_process:
            return
        outputs.save_tokenizer(self.tokenizer, target, self.chat_template)
        if full:
            self.output.model = str(target)
        else:
            self.output.adapter = str(target)
        if self.spec.output and self.spec.output.merge_adapter and not full:
            outputs.merge_adapter(
                self.model_dir,
                target,
                self.tokenizer,
                self.paths.merged,
                self.spec.model.trust_remote_code,
            )
            self.output.merged = str(self.paths.merged)

    # ------------------------------------------------------------------ evaluate
    def evaluate(self) -> None:
        if self.state.is_main_process:
            self.progress.evaluating()
        # Under ZeRO-3 the engine gathers each layer's shards as it runs, a collective:
        # every rank scores the same rows in step, rank 0 keeps the result.
        if not self.state.is_main_process and not self.zero3:
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        started = time.monotonic()
        scores = self._score(model, synced=self.zero3)
        bench = self._score_benchmarks(model, self.zero3)
        if not self.state.is_main_process:
            return
        metrics = dict(scores.metrics)
        if self.spec.objective != "sft" and self.trainer.eval_dataset is not None:
            # the preference trainer's own validation figures for the exported weights
            found = self.trainer.evaluate()
            for key, name in (
                ("eval_rewards/accuracies", "rewardAccuracy"),
                ("eval_rewards/margins", "rewardMargin"),
            ):
                if key in found:
                    metrics[name] = float(found[key])
        self.final = {
            "metrics": metrics,
            "samples": scores.samples,
            "generalPerplexity": scores.general_perplexity,
            "benchmarks": bench,
            "seconds": round(time.monotonic() - started, 2),
        }
        log.info("tuned: %s", metrics)
        self.evaluation = self._figures(metrics, scores.general_perplexity, bench)
        history = self.trainer.state.log_history
        patience = (
            self.spec.training.early_stopping.patience if self.spec.training.early_stopping else 2
        )
        self.overfitting = evaluation.overfitting(history, patience)
        curve = plots.loss_curve(history, self.paths.loss_curve, self.config.job.name)
        if curve:
            self.output.loss_curve = str(curve)
        self.output.report = str(self.paths.report)
        self.output.data_report = str(self.paths.data_report)
        outputs.write_json(self.paths.report, self.report())
        card = outputs.model_card(
            self.spec,
            self.plan.model_dump(by_alias=True, mode="json"),
            self.data_report,
            self.evaluation,
            self.config.job.name,
            self.advice,
        )
        self.paths.model_card.write_text(card)
        for folder in (self.output.adapter, self.output.model, self.output.merged):
            if folder is not None:
                (Path(folder) / "README.md").write_text(card)
        self.output.model_card = str(self.paths.model_card)

    def _figures(
        self, final: dict[str, float], general: float | None, bench: dict[str, Any]
    ) -> dict[str, Any]:
        """status.evaluation (wire form): baselines, final, per epoch, best, forgetting,
        benchmarks and the gate."""
        ev, base = self.spec.evaluation, self.baseline or {}

        def figures(entry: dict[str, Any] | None) -> dict[str, Any] | None:
            if not entry or "metrics" not in entry:
                return None
            return {**entry["metrics"], "source": entry.get("source")}

        out: dict[str, Any] = {
            "baseline": figures(base.get("zeroShot")),
            "fewShot": figures(base.get("fewShot")),
            "previous": figures(base.get("previous")),
            "final": dict(final),
            "perEpoch": selection.per_epoch(self.train_history),
            "bestMetric": selection.best(self.trainer.state, self.watch, self.best_loaded),
        }
        forgetting = None
        base_ppl = base.get("generalPerplexity")
        if ev.forgetting is not None and ev.forgetting.source is not None and base_ppl and general:
            forgetting = evaluation.forgetting(
                base_ppl, general, ev.forgetting.max_perplexity_increase_percent
            )
        out["forgetting"] = forgetting
        results = []
        if ev.forgetting is not None:
            for b in ev.forgetting.benchmarks:
                before, after = (base.get("benchmarks") or {}).get(b.name), bench.get(b.name)
                if before and after:
                    results.append(
                        benchmarks.verdict(
                            b.name,
                            b.metric,
                            before[b.metric],
                            after[b.metric],
                            after["rows"],
                            ev.forgetting.max_accuracy_drop_percent,
                        )
                    )
        out["benchmarks"] = results
        missing = dict(base.get("missing") or {})
        if not ev.compare_baseline:
            missing["zeroShot"] = "no zero-shot baseline: evaluation.compareBaseline is false"
        out["gate"] = gate.gate(
            ev,
            {k: (base.get(k) or {}).get("metrics") for k in ("zeroShot", "fewShot", "previous")},
            final,
            missing,
            forgetting,
            results,
        )
        out["passed"] = out["gate"].get("passed")
        return {k: v for k, v in out.items() if v not in (None, [])}

    def report(self) -> dict[str, Any]:
        """The full report (report.json): everything the summary had to leave out."""
        state = self.trainer.state if self.trainer else None
        return {
            "job": self.config.job.model_dump(by_alias=True, mode="json"),
            "plan": self.plan.model_dump(by_alias=True, mode="json"),
            "method": self.method.name,
            "precision": self.precision,
            "resumedFrom": self.resumed_from,
            "training": self.train_metrics,
            "steps": state.global_step if state else None,
            "earlyStopped": self.early_stopping.stopped_at if self.early_stopping else None,
            "baseline": self.baseline,
            "final": self.final,
            "evaluation": self.evaluation,
            "overfitting": getattr(self, "overfitting", None),
            "preference": getattr(self, "preference_info", None),
            "advice": self.advice,
            "data": self.data_report,
            "logHistory": state.log_history if state else [],
            "checkpoints": [str(c.path) for c in checkpoints.list_complete(self.paths.checkpoints)],
            "bestCheckpoint": state.best_model_checkpoint if state else None,
            "output": self.output.to_k8s(),
        }

    # ------------------------------------------------------------------ publish
    def publish(self) -> None:
        out = self.spec.output
        if out is None or not self.state.is_main_process:
            return
        finals = [
            p for p in (self.paths.adapter, self.paths.model, self.paths.merged) if p.is_dir()
        ]
        files = [
            p
            for p in (
                self.paths.report,
                self.paths.data_report,
                self.paths.loss_curve,
                self.paths.model_card,
            )
            if p.is_file()
        ]
        staging = Path(self.config.paths.scratch_dir, "publish")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for d in finals:
            shutil.copytree(d, staging / d.name)
        for f in files:
            shutil.copyfile(f, staging / f.name)
        for store in (out.s3, out.gcs):
            if store is not None:
                self.output.object_store = outputs.push_fsspec(staging, store.uri)
        if out.hf is not None:
            pushed = self.paths.merged if self.paths.merged.is_dir() else finals[0]
            self.output.hub = outputs.push_hub(
                pushed,
                out.hf.repo,
                out.hf.revision,
                out.hf.private,
                outputs.hub_push_token(),
            )

    # ------------------------------------------------------------------ cleanup
    def cleanup(self) -> None:
        reporter = getattr(self, "reporter", None)
        if reporter is not None:
            reporter.close()

    def summary(self, code: int, reason: str, message: str) -> TerminationSummary:
        """The compact result for the termination log, in the status's own types: the
        operator copies it into status unchanged (termination.render fits it in 4 KiB)."""
        state = self.trainer.state if self.trainer else None
        latest = checkpoints.latest(self.paths.checkpoints)
        best = state.best_model_checkpoint if state else None
        counts = (self.data_report or {}).get("counts", {})
        return TerminationSummary(
            exit_code=code,
            reason=reason,
            message=message,
            step=state.global_step if state else None,
            total_steps=state.max_steps if state else None,
            progress=self._final_progress(code == ExitCode.OK),
            checkpoints=CheckpointStatus(
                latest=str(latest.path),
                latest_step=latest.step,
                best=best,
                best_metric=state.best_metric if state and best else None,
            )
            if latest
            else None,
            evaluation=self._evaluation_status(),
            output=self.output if self.output.to_k8s() else None,
            data={k: int(v) for k, v in counts.items() if isinstance(v, int)},
            advice=[
                Advice.model_validate({k: v for k, v in a.items() if k in Advice.model_fields})
                for a in self.advice
            ],
        )

    def _final_progress(self, completed: bool) -> Progress | None:
        """The last progress report's figures; a completed run is at 100 %."""
        last = getattr(getattr(self, "progress", None), "last", None)
        if last is None:
            return None
        final = last.progress()
        if completed:
            final.percent, final.eta_seconds = 100.0, 0.0
        return final

    def _evaluation_status(self) -> EvaluationStatus | None:
        """Baselines vs tuned, per epoch, best, forgetting, benchmarks and the gate, as
        status shows them (typed here: a key the schema lacks fails now, not in the API
        server). Only the newest evaluations fit the termination log."""
        ev = dict(self.evaluation)
        if not ev:
            return None
        if len(ev.get("perEpoch") or []) > PER_EPOCH_IN_SUMMARY:
            ev["perEpoch"] = ev["perEpoch"][-PER_EPOCH_IN_SUMMARY:]
        return EvaluationStatus.model_validate(ev)


PER_EPOCH_IN_SUMMARY = 12
"""The newest evaluations that fit the 4 KiB termination log with everything else
(report.json has them all)."""
