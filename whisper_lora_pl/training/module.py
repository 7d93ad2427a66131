"""WhisperLoRA: the LightningModule. It holds the steps, the metrics and the optimizer; model.py builds the net."""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.optim.lr_scheduler import LambdaLR
from transformers import WhisperProcessor, get_scheduler

from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.data.collate import IGNORE_INDEX, has_clips
from whisper_lora_pl.data.features import FRAMES_PER_SECOND, set_feature_context
from whisper_lora_pl.decoding.decode import Decoded, Decoder, DecodingSettings, prompt_length
from whisper_lora_pl.decoding.text import ErrorRates
from whisper_lora_pl.model.build import build_whisper_lora, count_parameters
from whisper_lora_pl.model.merging import merged_in_memory
from whisper_lora_pl.model.settings import BaseDtype, EncoderLength, LoraSettings, Quantization, RunInfo
from whisper_lora_pl.training.evalrun import evaluate_sets
from whisper_lora_pl.training.rng import gather_rng_states, run_seed, set_rng_states
from whisper_lora_pl.training.specaugment import SpecAugment
from whisper_lora_pl.training.tally import PassTally

log = logging.getLogger(__name__)

Schedule = Literal["linear", "cosine", "constant"]
STEP_OK, STEP_EMPTY, STEP_NONFINITE = 0, 1, 2  # a training step's outcome, reduced with max over ranks


#: our schedule names -> transformers' (``constant`` keeps the warmup, as the Trainer's ``constant_with_warmup``)
SCHEDULES = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}
#: a third seed word for the full-window draws (model.encoder_full_share), apart from every other (seed, step) draw
FULL_WINDOW_STREAM = 0x5EED


def warmup_then(optimizer: torch.optim.Optimizer, schedule: Schedule, warmup_steps: int, total_steps: int) -> LambdaLR:
    """transformers' own schedules (``get_scheduler``), so every step's learning rate is the HF Trainer's: linear
    warmup from 0 at step 0 (``s / w``), then linear or cosine decay to zero at ``total_steps``, or constant."""
    return get_scheduler(SCHEDULES[schedule], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)


class WhisperLoRA(L.LightningModule):
    """LoRA fine-tuning of a quantized Whisper with generate-based WER/CER in validation and test.

    Args:
        model_name: hub name or local folder of a Whisper checkpoint.
        language: language of the transcripts (``zh``), or None for English-only models.
        task: ``transcribe`` or ``translate``, or None for English-only models.
        quantization: how the frozen base is stored: ``int8`` (LLM.int8), ``nf4`` (4-bit) or ``none``
            (unquantized, in ``base_dtype``).
        base_dtype: weight type of an unquantized base: ``bfloat16`` is the fast GPU choice when its memory allows
            (LoRA weights stay float32, and precision stays ``bf16-mixed``); ignored with int8 / nf4.
        context_seconds: seconds of audio the encoder sees (Whisper: 30). Shorter means less encoder work on short
            clips (Common Voice's are 3-6 s) but needs fine-tuning to work; features, the duration filter,
            decoding, export and transcribe all follow it.
        encoder_length: ``padded``: every clip is padded to the full context, as Whisper was trained. ``dynamic``: a
            training batch is cut after its longest clip (rounded up to 1 s; in decoding, each clip at its own length)
            and the encoder adds only those positions, so a batch of 4 s clips costs the encoder 5 s of work, not
            30; training, evaluation, predict and transcribe all do it (the merged folder still decodes at 30 s in
            transformers and faster-whisper).
        encoder_min_seconds: with ``dynamic``, a batch is never cut below this many seconds: short clips keep some
            of the trailing silence Whisper always saw in pretraining.
        encoder_full_share: with ``dynamic``, this share of training steps keeps the full window (drawn from the
            run's seed and the step: the same on every rank and on resume), so the model stays as right at 30 s,
            where transformers' pipeline and faster-whisper decode, as at the cut lengths it evaluates with.
        lora: LoRA rank, alpha, dropout, target modules and bias (a frozen dataclass: safe as a default).
        spec_augment: SpecAugment time and frequency masks on the training log-mel (off by default); each clip's
            masks are drawn from (the run's seed, the step, the clip), so a resumed run masks as the unbroken one.
        gradient_checkpointing: recompute activations in backward (non-reentrant) to save memory.
        reentrant_checkpointing: checkpoint reentrantly instead, with input hooks that keep the encoder's adapters
            trained; with an int8 base it saves far more memory (see ``build_whisper_lora``).
        optimizer: optimizer over the trainable parameters only, e.g. AdamW with its learning rate.
        lr_schedule: shape after warmup: ``linear`` or ``cosine`` decay to zero over the run, or ``constant``.
        warmup_steps: optimizer steps of linear warmup.
        max_new_tokens: most tokens a clip may get whatever its duration (the budget is usually smaller).
        num_beams: beam width of decoding (1 = greedy).
        decoding: token budget per second of audio and the loop guard (``whisper_lora_pl.decoding.decode``); evaluation,
            predict, export and transcribe all decode with these, read back from the checkpoint.
        evaluate_merged: validation, test and predict decode with the model export writes (the int8 / nf4 base
            dequantized, the adapters merged in), built from the training model's weights in memory at the start of
            each pass (no reload from disk) and freed at its end: the evaluation measures what users take home,
            without bitsandbytes' quantized kernels (twice as fast on CPU), at the cost of a copy of the base while
            the pass runs, in the run's 16-bit precision on a GPU (whisper-large-v2: 3.1 GB), in float32 on the CPU
            (5.9 GB: the layers that were float32 are shared). False decodes with the training model itself, as the
            tutorial does. No effect with ``quantization: none``.
        log_examples: how many (reference, hypothesis) pairs to print after each evaluation.
        on_nonfinite_loss: ``stop`` raises naming the step; ``skip`` drops that step's update (on every rank
            together) and counts it in ``train/skipped_steps`` (with steps whose clips all failed to decode).
    """

    def __init__(
        self,
        model_name: str = "openai/whisper-large-v2",
        language: str | None = "zh",
        task: Literal["transcribe", "translate"] | None = "transcribe",
        quantization: Quantization = "int8",
        base_dtype: BaseDtype = "float32",
        context_seconds: float = 30.0,
        encoder_length: EncoderLength = "padded",
        encoder_min_seconds: float = 0.0,
        encoder_full_share: float = 0.0,
        lora: LoraSettings = LoraSettings(),
        spec_augment: SpecAugment = SpecAugment(),
        gradient_checkpointing: bool = True,
        reentrant_checkpointing: bool = False,
        optimizer: OptimizerCallable = torch.optim.AdamW,
        lr_schedule: Schedule = "linear",
        warmup_steps: int = 50,
        max_new_tokens: int = 128,
        num_beams: int = 1,
        decoding: DecodingSettings = DecodingSettings(),
        evaluate_merged: bool = True,
        log_examples: int = 3,
        on_nonfinite_loss: Literal["stop", "skip"] = "stop",
    ) -> None:
        super().__init__()
        if not 0.0 <= encoder_full_share <= 1.0:
            raise ValueError(f"model.encoder_full_share must lie in [0, 1], got {encoder_full_share}")
        self.save_hyperparameters(ignore=["optimizer", "lora", "decoding", "spec_augment"])
        self.hparams["lora"] = asdict(lora)  # plain values: checkpoints load with weights_only=True
        self.spec_augment = SpecAugment(**spec_augment) if isinstance(spec_augment, dict) else spec_augment
        self.hparams["spec_augment"] = asdict(self.spec_augment)
        self.hparams["decoding"] = asdict(decoding)
        self.decoding = decoding
        self.decoder: Decoder | None = None  #: the decoding of the pass under way (see evaluate_merged)
        self._training_decoder: Decoder | None = None
        self.optimizer_factory = optimizer
        self.lora = lora  # hparams holds it as a plain dict when LightningCLI built the module
        self.model = None
        self.processor: WhisperProcessor | None = None
        self.strict_loading = False  # checkpoints hold the adapters only; on_load_checkpoint checks them
        self.val_rates = ErrorRates(language, prefix="val/")
        self.test_rates = ErrorRates(language, prefix="test/")
        # clips trained on or scored, skipped and why, loops, per-utterance records: of the pass under way
        self.tally = PassTally()
        self.skipped_steps = 0
        self._drop_update = False  # DDP: this step's update is dropped (see _skipped_step)
        self._rng_to_restore: dict | None = None
        self._loaded_step = 0  # global step of the checkpoint loaded for validate/test/predict
        #: (when, {metric: value}) after each validation pass; the full sanity check counts as "before training"
        self.eval_history: list[tuple[str, dict[str, float]]] = []
        self._validations = 0  #: full validation passes so far (data.eval_sets' ``every`` counts them)
        self._pieces: tuple[float | None, float] = (None, 0.0)  #: read from a checkpoint (see pieces)

    def configure_model(self) -> None:
        """Load the quantized base on this process's device; runs before the optimizer and checkpoint restore."""
        if self.model is not None:
            return
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        if precision in ("16-true", "bf16-true"):
            raise ValueError(f"precision {precision} would downcast the fp32 LoRA weights: use 16-mixed or bf16-mixed")
        hp = self.hparams
        self.model = build_whisper_lora(
            self.run_info(),
            self._target_device(),
            gradient_checkpointing=hp.gradient_checkpointing,
            reentrant_checkpointing=hp.reentrant_checkpointing,
        )
        # from_pretrained returns eval mode and Lightning (>= 2.2) keeps each submodule's mode: without this,
        # training would silently run with gradient checkpointing and LoRA dropout off
        self.model.train()
        self.processor = WhisperProcessor.from_pretrained(resolve_model_name(hp.model_name))
        set_feature_context(self.processor.feature_extractor, hp.context_seconds)
        self.decoder = self._training_decoder = Decoder(
            self.model, self.processor.tokenizer, hp.language, hp.task, hp.num_beams, hp.max_new_tokens, self.decoding
        )
        trainable, total = count_parameters(self.model)
        rank_zero_info(f"trainable params: {trainable:,} || all params: {total:,} || {100 * trainable / total:.4f}%")

    def run_info(self) -> RunInfo:
        """What this run is (base, adapters, decoding), as checkpoints and exported folders carry it."""
        return RunInfo.from_hparams(dict(self.hparams) | {"lora": self.lora, "decoding": self.decoding})

    def _target_device(self) -> torch.device:
        return self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")

    def forward(self, input_features: torch.Tensor, labels: torch.Tensor | None = None):
        return self.model(input_features=input_features, labels=labels)

    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        # clips that failed to decode were warned about in the worker and are counted here; a batch may hold none
        self.tally.skip((batch or {}).get("skipped", {}), "train")
        loss = self._training_loss(batch) if has_clips(batch) else None
        status = STEP_EMPTY if loss is None else (STEP_OK if torch.isfinite(loss) else STEP_NONFINITE)
        # every rank takes the same decision: one rank skipping backward alone would hang DDP's all-reduce
        status = int(self.trainer.strategy.reduce(torch.tensor(status, device=self.device), reduce_op="max"))
        if status == STEP_NONFINITE:
            fault = self._nonfinite_fault(batch, batch_idx, loss)
            if self.hparams.on_nonfinite_loss == "stop":
                raise FloatingPointError(f"{fault}; or set model.on_nonfinite_loss: skip to drop such steps")
            log.warning("%s; the step is skipped (model.on_nonfinite_loss: skip)", fault)
        if status != STEP_OK:
            self.skipped_steps += 1
            self.log("train/skipped_steps", float(self.skipped_steps), batch_size=1)
            return self._skipped_step()
        size = len(batch["labels"])
        self.tally.of("train")["clips"].update(batch.get("clips", size))
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], prog_bar=False, batch_size=size)
        return loss

    def _training_loss(self, batch: dict) -> torch.Tensor:
        features = self._encoder_input(batch)
        if not self.spec_augment.active:
            return self(features, batch["labels"]).loss
        # masks from (seed, step, clip): exact on resume, other clips on other ranks, no global generator moved;
        # on each clip's frames, never its padding (``specaugment.SpecAugment``)
        frames = (batch["duration"] * FRAMES_PER_SECOND).ceil().long().tolist()
        seeds = [(run_seed(), self.global_step, int(index)) for index in batch["index"].tolist()]
        return self(self.spec_augment(features, frames, seeds), batch["labels"]).loss

    def _encoder_input(self, batch: dict) -> torch.Tensor:
        """The training batch's features as the encoder takes them: the full window, or cut after the longest clip
        (but for the ``encoder_full_share`` of steps that keep the full window)."""
        cut = getattr(self.model.get_encoder(), "cut", None)  # encoder_length: dynamic
        if cut is None or self._full_window_step():
            return batch["input_features"]
        return cut(batch["input_features"], batch["duration"].tolist())

    def _full_window_step(self) -> bool:
        """Whether this step trains on the full window: a draw from (seed, step) alone, so every rank of a DDP
        step agrees (none waits on another's longer encoder) and a resumed run draws as the unbroken one."""
        share = self.hparams.get("encoder_full_share", 0.0)
        if share <= 0.0:
            return False
        seed = [run_seed(), self.global_step, FULL_WINDOW_STREAM]
        return bool(np.random.default_rng(seed).random() < share)

    def _skipped_step(self) -> torch.Tensor | None:
        """Drop this step's update. One process returns None (Lightning skips backward and the step). DDP refuses
        None: every rank returns a zero loss on the adapters instead, so the backward and its all-reduce happen on
        all ranks alike, and ``on_before_optimizer_step`` then clears the gradients, so that the optimizer leaves
        every weight and its own state untouched (a zero gradient would still move AdamW's weights)."""
        if self.trainer.world_size == 1:
            return None
        self._drop_update = True
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._drop_update:  # after backward and AMP's unscaling, before clipping and the step
            for param in self.parameters():
                param.grad = None
            self._drop_update = False

    def _nonfinite_fault(self, batch: dict | None, batch_idx: int, loss: torch.Tensor | None) -> str:
        """What a non-finite loss comes from: the clips of the batch, and whether their input was already bad."""
        where = f"non-finite loss at step {self.global_step} (batch {batch_idx})"
        if loss is None or bool(torch.isfinite(loss)):
            return f"{where} on another rank: that rank's message names its clips"
        features = batch["input_features"]
        bad = [clip for clip, ok in zip(batch["id"], torch.isfinite(features).flatten(1).all(1), strict=True) if not ok]
        if bad:
            return f"{where}: the input features of clips {bad} are not finite: remove or re-encode them"
        return f"{where} on finite input (clips {list(batch['id'])}): the training diverged; lower the learning rate"

    def on_train_epoch_start(self) -> None:
        self.tally.start("train")

    def on_train_epoch_end(self) -> None:
        values = self.tally.report("train", self.trainer.strategy, self.device)
        for metric in self.tally.of("train").values():
            metric.reset()
        rank_zero_info(f"epoch {self.current_epoch}: trained on {int(values['train/clips'])} clips")
        self.log_dict(values, batch_size=1)

    def decode(self, input_features: torch.Tensor, durations: list[float] | None = None) -> list[Decoded]:
        """The shared decoding (``whisper_lora_pl.decoding.decode``): trained prompt, budget from each clip's seconds of
        audio (a full window when not given), loop guard."""
        if durations is None:
            durations = [self.hparams.context_seconds] * len(input_features)
        return self.decoder(input_features, durations)

    def transcribe(self, input_features: torch.Tensor, durations: list[float] | None = None) -> list[str]:
        return [result.text for result in self.decode(input_features, durations)]

    def _decode_batch(self, batch: dict, batch_idx: int) -> tuple[list[int], list[Decoded], dict[str, str]]:
        """The rows that decoded and their results, and the clips whose decoding failed (id -> error), each warned
        about: a failure costs only the clip behind it (running out of memory is an error, see ``Decoder``)."""
        ids = list(batch["id"])
        what = f"batch {batch_idx} ({', '.join(map(str, ids[:3]))}{', ...' if len(ids) > 3 else ''})"
        results = self.decoder.isolating(
            batch["input_features"], batch["duration"].tolist(), "data.eval_batch_size", what
        )
        failed = {clip: str(r) for clip, r in zip(batch["id"], results, strict=True) if isinstance(r, Exception)}
        for clip, error in failed.items():
            log.warning("skipping clip %s: decoding failed: %s", clip, error)
        rows = [row for row, result in enumerate(results) if not isinstance(result, Exception)]
        return rows, [results[row] for row in rows], failed

    def _evaluate(self, batch: dict | None, stage: str, batch_idx: int) -> None:
        if batch is None:
            return
        self.tally.skip(batch.get("skipped", {}), stage)
        counts = self.tally.of(stage)
        if has_clips(batch):
            rows, results, failed = self._decode_batch(batch, batch_idx)
            self.tally.skip(dict.fromkeys(failed, "decoding failed"), stage)
            if rows:
                self._score(batch, rows, results, stage, batch_idx)
            counts["looped"].update(sum(result.looped for result in results))
            counts["retried"].update(sum(result.attempts > 1 for result in results))
            counts["clips"].update(len(rows))
        for name, metric in counts.items():
            self.log(f"{stage}/{name}", metric, batch_size=1)

    def _score(self, batch: dict, rows: list[int], results: list[Decoded], stage: str, batch_idx: int) -> None:
        rates = self.val_rates if stage == "val" else self.test_rates
        labels = batch["labels"][rows]
        durations = batch["duration"][rows].tolist()
        hypotheses = [result.text for result in results]
        references = self.processor.batch_decode(
            labels.masked_fill(labels == IGNORE_INDEX, self.processor.tokenizer.pad_token_id), skip_special_tokens=True
        )
        # labels are the prompt but <|startoftranscript|>, the text, <|endoftext|>: the text's tokens are the rest
        around_text = prompt_length(self.hparams.language, self.hparams.task)
        reference_tokens = ((labels != IGNORE_INDEX).sum(1) - around_text).tolist()
        self.tally.over_budget += sum(
            n > b for n, b in zip(reference_tokens, self.decoder.budgets(durations), strict=True)
        )
        normal_hyps, normal_refs = rates.update(hypotheses, references)
        ids = [batch["id"][row] for row in rows]
        for clip, ref, result, n_ref, n_hyp in zip(ids, references, results, normal_refs, normal_hyps, strict=True):
            record = {"id": clip, "reference": ref, "hypothesis": result.text, "normalized_reference": n_ref}
            record |= {"normalized_hypothesis": n_hyp} | rates.utterance(n_hyp, n_ref) | result.report()
            self.tally.records.append(record)
        if batch_idx == 0:
            self.tally.examples = list(zip(references, hypotheses, strict=True))[: self.hparams.log_examples]
        self.log_dict(rates.metrics, prog_bar=True, batch_size=len(hypotheses))

    def _begin_pass(self) -> None:
        """Decode this validation, test or predict pass with the merged model (``evaluate_merged``), built from the
        training model's weights in memory (``merging.merged_in_memory``): no reload of the base from disk."""
        if self.hparams.evaluate_merged and self.hparams.quantization != "none":
            merged = merged_in_memory(self.model, self.evaluation_dtype())
            self.decoder = replace(self._training_decoder, model=merged)

    def evaluation_dtype(self) -> torch.dtype:
        """The merged evaluation model's weights: the run's 16-bit precision on a GPU, float32 on the CPU (where it
        is what export writes, and half-precision matmuls are slow)."""
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        if self._target_device().type != "cuda":
            return torch.float32
        return {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision, torch.float32)

    def _end_pass(self) -> None:
        self.decoder = self._training_decoder  # the merged copy is freed

    def on_validation_start(self) -> None:
        self._begin_pass()

    def on_validation_epoch_start(self) -> None:
        self.tally.start("val")

    def validation_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> None:
        self._evaluate(batch, "val", batch_idx)

    def on_validation_epoch_end(self) -> None:
        self.tally.print_examples("val")
        if self.trainer.sanity_checking and self.trainer.num_sanity_val_steps != float("inf"):
            self.tally.clear()
            return  # a partial sanity check says nothing about the split
        when = "before training" if self.trainer.sanity_checking else f"step {self.global_step}"
        name = "val-before-training" if self.trainer.sanity_checking else f"val-step{self.trained_steps}"
        values = {name: value.item() for name, value in self.val_rates.metrics.compute().items()}
        values |= self.tally.report("val", self.trainer.strategy, self.device, name)
        self._validations += 1
        sets = self._evaluate_sets("val", name, lambda every: (self._validations - 1) % every == 0)
        self.log_dict(sets, batch_size=1)
        values |= sets
        self.eval_history.append((when, values))
        rank_zero_info(f"{when}: " + "  ".join(f"{k} {v:.4g}" for k, v in values.items()))
        self.tally.write(self.trainer, name)

    def on_validation_end(self) -> None:
        self._end_pass()

    def on_fit_end(self) -> None:
        if len(self.eval_history) > 1 and self.eval_history[0][0] == "before training":
            (_, before), (when, after) = self.eval_history[0], self.eval_history[-1]
            lines = [f"{k}: {before[k]:.4f} before training -> {after[k]:.4f} at {when}" for k in before if k in after]
            rank_zero_info("\n".join(lines))

    def on_test_start(self) -> None:
        self._begin_pass()

    def on_test_epoch_start(self) -> None:
        self.tally.start("test")

    def test_step(self, batch: dict[str, torch.Tensor] | None, batch_idx: int) -> None:
        self._evaluate(batch, "test", batch_idx)

    def on_test_epoch_end(self) -> None:
        name = f"test-step{self.trained_steps}"
        self.tally.print_examples("test")
        self.tally.report("test", self.trainer.strategy, self.device, name)
        self.tally.write(self.trainer, name)
        sets = self._evaluate_sets("test", name, lambda every: True)
        self.log_dict(sets, batch_size=1)
        if sets:
            rank_zero_info("eval sets: " + "  ".join(f"{k} {v:.4g}" for k, v in sets.items()))

    def _evaluate_sets(self, stage: str, when: str, due) -> dict[str, float]:
        """``data.eval_sets`` whose turn it is (``due(every)``), decoded with this pass's decoder."""
        datamodule = getattr(self.trainer, "datamodule", None)
        sets = [s for s in getattr(datamodule, "eval_data", {}).values() if due(s.spec.every)]
        if not sets:
            return {}
        log_dir = self.trainer.log_dir  # a collective: every rank asks
        decoder = self.decoder
        if self.decoding.other_languages == "base" and self.hparams.language:  # the base decodes other languages
            # built here, for the sets alone: the split and predict decode in the trained language
            base = merged_in_memory(self.model, self.evaluation_dtype(), adapters=False)
            decoder = replace(decoder, route=(base, self.hparams.language))
        piece_seconds, whole_seconds = self.pieces()
        return evaluate_sets(
            sets,
            decoder,
            self.processor.feature_extractor,
            stage,
            run_language=self.hparams.language,
            long_timestamps=self.long_timestamps(),
            batch_size=datamodule.eval_batch_size,
            piece_seconds=piece_seconds,
            whole_seconds=whole_seconds,
            world=self.trainer.world_size,
            rank=self.trainer.global_rank,
            device=self.device,
            folder=Path(log_dir) / "predictions" if log_dir else None,
            when=when,
        )

    def long_timestamps(self) -> bool:
        """Whether long audio is decoded with the model's timestamps (``model.decoding.timestamps``; ``auto``: when
        the run trains on timestamp labels)."""
        if self.decoding.timestamps != "auto":
            return self.decoding.timestamps == "model"
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, "timestamp_share", 0.0) > 0

    def pieces(self) -> tuple[float | None, float]:
        """How this run cuts long audio: pieces of about the median duration of the clips it trains on, and files
        up to the longest of them whole (``segments.at_pauses``); of the checkpoint's run in validate/test, and
        written into checkpoints for transcribe."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        trained = datamodule.training_clip_seconds() if hasattr(datamodule, "training_clip_seconds") else None
        return trained if trained is not None else self._pieces

    def on_test_end(self) -> None:
        self._end_pass()

    def on_predict_start(self) -> None:
        self._begin_pass()
        log_dir = self.trainer.log_dir  # a collective: every rank asks
        if log_dir:  # each rank's records as each batch is decoded: a crash or kill keeps what was done
            self.tally.open_partial(
                Path(log_dir) / "predictions" / f"predict.rank{self.trainer.global_rank}.partial.jsonl"
            )

    def predict_step(self, batch: dict | None, batch_idx: int) -> list[str]:
        """Texts of the clips that decoded; every clip gets a record, with ``error`` where it was skipped."""
        if batch is None:
            return []
        new = [{"id": clip, "error": reason} for clip, reason in batch.get("skipped", {}).items()]
        texts = []
        if has_clips(batch):
            rows, results, failed = self._decode_batch(batch, batch_idx)
            new += [{"id": clip, "error": f"decoding failed: {error}"} for clip, error in failed.items()]
            for row, result in zip(rows, results, strict=True):
                new.append({"id": batch["id"][row], "hypothesis": result.text} | result.report())
                texts.append(result.text)
        self.tally.add(new)
        return texts

    def on_predict_epoch_end(self) -> None:
        self.tally.write(self.trainer, "predict")

    def on_predict_end(self) -> None:
        self._end_pass()

    @property
    def trained_steps(self) -> int:
        """Optimizer steps behind the current weights (``global_step`` is 0 in validate/test from a checkpoint)."""
        return max(self.global_step, self._loaded_step)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        total = self._total_steps()
        schedule = warmup_then(optimizer, self.hparams.lr_schedule, self.hparams.warmup_steps, total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _total_steps(self) -> int:
        """The run's optimizer steps, as ``trainer.estimated_stepping_batches`` counts them, but from the datamodule's
        own count of training batches: Lightning's estimate builds the train loader before a checkpoint is restored,
        and a loader built then never gets its saved position back (Lightning issue 20550), so a run resumed
        mid-epoch with ``max_epochs`` set (the demo's) would start its epoch again. A test resumes the demo."""
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if trainer.max_epochs in (None, -1) or not hasattr(datamodule, "training_batches"):
            return int(trainer.estimated_stepping_batches)  # no loader built when max_epochs is -1
        batches, limit = datamodule.training_batches(), trainer.limit_train_batches
        batches = min(batches, limit) if isinstance(limit, int) else int(batches * limit)
        steps = math.ceil(batches / trainer.accumulate_grad_batches) * max(trainer.max_epochs, 1)
        return min(steps, trainer.max_steps) if trainer.max_steps != -1 else steps

    def trainable_keys(self) -> set[str]:
        return {name for name, param in self.named_parameters() if param.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the adapters only: the frozen base is rebuilt from ``model_name`` (megabytes, not gigabytes)."""
        keys = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keys}
        checkpoint["skipped_steps"] = self.skipped_steps
        checkpoint["rng_states"] = gather_rng_states()
        checkpoint["evaluation"] = self._evaluation_of_these_weights()
        checkpoint["timestamps"] = self.long_timestamps()  # transcribe's default
        checkpoint["piece_seconds"], checkpoint["whole_seconds"] = self.pieces()  # transcribe's pieces of long audio
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "other_speech_languages"):  # what the merged weights keep (export's model card)
            checkpoint["other_speech"] = datamodule.other_speech_languages()

    def _evaluation_of_these_weights(self) -> dict | None:
        """The last validation if it scored the weights being saved (what export's model card reports)."""
        if not self.eval_history or self.eval_history[-1][0] != f"step {self.global_step}":
            return None
        values = self.eval_history[-1][1]
        datamodule = getattr(self.trainer, "datamodule", None)
        source = getattr(datamodule, "source", None)
        return {
            "step": self.global_step,
            "split": datamodule.split_names["val"] if datamodule is not None else None,
            "dataset": source.card_dataset() if source is not None else None,
            "cer": values["val/cer"],
            "wer": values["val/wer"],
            "clips": values.get("val/clips"),
            # data.eval_sets, and the base's figures before training where the run measured them (the model card)
            "sets": {k: v for k, v in values.items() if k.count("/") == 2},
            "before": self.eval_history[0][1] if self.eval_history[0][0] == "before training" else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Non-strict loading forgives a missing key silently: check every adapter weight is there."""
        missing = self.trainable_keys() - set(checkpoint["state_dict"])
        if missing:
            raise KeyError(f"checkpoint lacks {len(missing)} adapter weights, e.g. {sorted(missing)[:3]}")
        self.skipped_steps = checkpoint.get("skipped_steps", 0)
        self._loaded_step = checkpoint.get("global_step", 0)
        self._pieces = (checkpoint.get("piece_seconds"), checkpoint.get("whole_seconds") or 0.0)
        states = checkpoint.get("rng_states")
        if states and self._trainer is not None:
            if len(states) == self.trainer.world_size:
                self._rng_to_restore = states[self.trainer.global_rank]
            elif self.trainer.state.fn == "fit":  # validate/test/predict draw nothing random
                rank_zero_warn(
                    f"the checkpoint was written by {len(states)} processes and this run has "
                    f"{self.trainer.world_size}: their random streams (LoRA dropout) cannot be restored, so the "
                    "resumed run continues, but not exactly as an unbroken run would"
                )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Restore the RNG at the first resumed step, after loaders are rebuilt (which draws from it)."""
        if self._rng_to_restore is not None:
            set_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
