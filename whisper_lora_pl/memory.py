"""The memory a run will need, read before step 1, and its worst batch run first: an out-of-memory error comes in the
first second of ``fit`` and names the setting to lower, not an hour in at a step drawn at random (the full-window
share, the bucket of the most clips) or at the first validation (the evaluation's merged copy).

:class:`MemoryCheck` is a callback the CLI always adds (``memory_check.enabled: false`` turns it off). Its batches
are made up (random features and labels from a generator of their own, the model's own shapes): the run's random
streams, its data order and its weights are exactly as without it, so resume stays exact.
"""

from __future__ import annotations

import contextlib
import math
import resource
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import bitsandbytes as bnb
import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from transformers.modeling_outputs import BaseModelOutput

from whisper_lora_pl.decode import out_of_memory
from whisper_lora_pl.features import FRAMES_PER_SECOND

GIB = 2**30
QUANTIZED = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)


class OutOfMemoryBudget(RuntimeError):
    """The run's worst batch does not fit: the message says which setting to lower, and to what."""


@dataclass(frozen=True)
class Shape:
    """A batch as memory sees it: clips, seconds of encoder input per clip, label tokens per clip."""

    clips: int
    seconds: float
    tokens: int
    longest: float = 0.0  #: seconds of its longest clip (what data.batch_seconds is divided by)

    def __str__(self) -> str:
        labels = f" with {self.tokens} label tokens" if self.tokens else ""
        return f"{self.clips} clips of {self.seconds:g} s{labels}"


def worst_training_batch(module, datamodule) -> Shape:
    """The training batch of the most clips, at the longest encoder input it can get: the full window if the
    encoder is padded or a share of steps keeps it (``encoder_full_share``), else its bucket's longest clip; labels
    as long as the split's longest (or the decoder's limit, for packed windows)."""
    hp = module.hparams
    full = hp.encoder_length == "padded" or hp.get("encoder_full_share", 0.0) > 0
    shapes = datamodule.training_batch_shapes()
    return max(
        (Shape(clips, hp.context_seconds if full else seconds, tokens, seconds) for clips, seconds, tokens in shapes),
        key=lambda s: (s.clips * s.seconds, s.clips),
    )


class MemoryCheck(L.Callback):
    """At the start of ``fit``: logs what the run holds (quantized base, adapters with their gradients and optimizer
    moments, the evaluation's merged copy), then runs the worst training batch (forward and backward as configured)
    and one ``generate`` of the largest evaluation batch to its whole token budget, and reports the peak memory
    (CUDA's ``max_memory_allocated``; on the CPU the process's peak resident memory). If either runs out of memory,
    the most clips that fit are found (halving, then bisection) and the run stops with an error that names the
    setting to lower and the value that fits. It costs one training step and one evaluation batch at start-up.

    Args:
        enabled: run the check (false: start training at once, as before the check existed).
        on_cpu: run the worst batches on the CPU too. There memory runs out by the kernel killing the process, which
            no check can turn into an error, and the batches cost the demo about 20 s (its full-window training
            batch), so by default a CPU run only logs what it holds.
    """

    def __init__(self, enabled: bool = True, on_cpu: bool = False) -> None:
        self.enabled, self.on_cpu = enabled, on_cpu
        self.report: dict[str, float] = {}  #: what the check measured (bytes), for tests and benchmarks

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        datamodule = getattr(trainer, "datamodule", None)
        if not self.enabled or datamodule is None or "train" not in getattr(datamodule, "prepared", {}):
            return
        device = module.device
        self.report = dict(held_bytes(module))
        held = ", ".join(f"{name} {size / GIB:.2f} GiB" for name, size in self.report.items())
        if device.type == "cpu" and not self.on_cpu:
            rank_zero_info(f"memory on {device}: {held} (memory_check.on_cpu: true runs the worst batches first)")
            return
        rank_zero_info(f"memory on {device}: {held}; running the worst batches first")
        train = worst_training_batch(module, datamodule)
        ran = [f"training {train}"]
        with _restored(module):
            advice = _training_advice(datamodule, train)
            self.report["train_peak"] = _fitting(lambda s: _train_once(module, s, trainer), train, advice, device)
            if trainer.limit_val_batches != 0 and "val" in datamodule.prepared:
                evaluation = worst_evaluation_batch(module, datamodule)
                advice = _advice("data.eval_batch_size", evaluation.clips, lambda clips: clips)
                self.report["eval_peak"] = _fitting(lambda s: _decode_once(module, s), evaluation, advice, device)
                ran.append(f"evaluation {evaluation} to their whole token budget")
        peak = max(self.report["train_peak"], self.report.get("eval_peak", 0.0)) / GIB
        total = (
            f" of {torch.cuda.get_device_properties(device).total_memory / GIB:.1f}" if device.type == "cuda" else ""
        )
        rank_zero_info(
            f"memory: the worst batches ({'; '.join(ran)}) fit: peak {_peak_name(device)} {peak:.2f}{total} GiB"
        )


def worst_evaluation_batch(module, datamodule) -> Shape:
    """The largest evaluation batch at its longest input: the full window, or the split's longest clip for a
    dynamic encoder (which decodes each clip at its own length)."""
    seconds = module.hparams.context_seconds
    if module.hparams.encoder_length == "dynamic":
        seconds = min(seconds, math.ceil(max(datamodule.prepared["val"].durations)))
    return Shape(datamodule.eval_batch_size, float(seconds), 0)


def held_bytes(module) -> dict[str, int]:
    """What the run holds whatever the batch: the frozen base as stored (int8 / 4-bit packed), the adapters with
    their gradients and two optimizer moments (AdamW's), and the evaluation's merged copy (``evaluate_merged``)."""
    frozen = sum(t.numel() * t.element_size() for t in module.model.parameters() if not t.requires_grad)
    frozen += sum(t.numel() * t.element_size() for t in module.model.buffers())
    trainable = sum(t.numel() * t.element_size() for t in module.model.parameters() if t.requires_grad)
    held = {"frozen base": frozen, "adapters + gradients + optimizer": 4 * trainable}
    if module.hparams.evaluate_merged and module.hparams.quantization != "none":
        dtype = module.evaluation_dtype()
        size = torch.empty((), dtype=dtype).element_size()
        # the dequantized layers are new; the rest is shared in float32, copied in 16 bits
        dense = sum(m.in_features * m.out_features for m in module.model.modules() if isinstance(m, QUANTIZED))
        others = sum(t.numel() for t in module.model.parameters() if t.dtype.is_floating_point and not t.requires_grad)
        held["evaluation copy"] = dense * size + (others * size if dtype != torch.float32 else 0)
    return held


def _fitting(run: Callable[[Shape], None], shape: Shape, advice: Callable[[Shape, Shape | None], str], device) -> float:
    """Run ``shape``; if it runs out of memory, find the most clips that fit (halving, then bisecting between the
    last that fit and the first that did not, NeMo's OOMptimizer's search) and raise the advice for them."""
    if _fits(run, shape, device):
        return _measured(run, shape, device)
    fails, fits = shape.clips, 0
    while fits == 0 and fails > 1:
        if _fits(run, replace(shape, clips=fails // 2), device):
            fits = fails // 2
        else:
            fails //= 2
    while fails - fits > 1 and fits > 0:
        middle = (fits + fails) // 2
        if _fits(run, replace(shape, clips=middle), device):
            fits = middle
        else:
            fails = middle
    raise OutOfMemoryBudget(advice(shape, replace(shape, clips=fits) if fits else None))


def _fits(run: Callable[[Shape], None], shape: Shape, device) -> bool:
    try:
        _measured(run, shape, device)
    except Exception as err:
        if not out_of_memory(err):
            raise
        err.with_traceback(None)  # its frames hold the batch's tensors
        return False
    return True


def _measured(run: Callable[[Shape], None], shape: Shape, device) -> float:
    """Peak bytes while ``run(shape)`` ran: CUDA's peak allocation, or the process's peak resident set on the CPU
    (which never goes down: the largest of everything the process did so far)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        run(shape)
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        return float(torch.cuda.max_memory_allocated(device))
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def _peak_name(device) -> str:
    return "allocated" if device.type == "cuda" else "resident (the process's, so far)"


def _training_advice(datamodule, worst: Shape) -> Callable[[Shape, Shape | None], str]:
    seconds = getattr(datamodule, "batch_seconds", None)
    if seconds and not (datamodule.pack_windows or datamodule.timestamp_share > 0):
        # a bucket's batch holds floor(batch_seconds / its longest clip) clips
        return _advice("data.batch_seconds", seconds, lambda clips: math.ceil(10 * clips * worst.longest) / 10)
    return _advice("data.batch_size", datamodule.batch_size, lambda clips: clips)


def _advice(setting: str, now: float, value: Callable[[int], float]) -> Callable[[Shape, Shape | None], str]:
    """The error's text: the worst batch, what fits, and the value of ``setting`` that gives it."""

    def say(worst: Shape, fits: Shape | None) -> str:
        where = f"out of memory: the worst batch this run will meet ({worst}) does not fit"
        if fits is None:
            return (
                f"{where}, nor does one clip: turn on model.gradient_checkpointing, use model.quantization nf4, a "
                "shorter model.context_seconds, or a device with more memory"
            )
        keep = ""
        if setting != "data.eval_batch_size":
            keep = (
                f" and raise trainer.accumulate_grad_batches {math.ceil(worst.clips / fits.clips)}x to keep the batch"
            )
        return (
            f"{where}; {fits.clips} clips fit: lower {setting} from {now:g} to {value(fits.clips):g}{keep} "
            "(memory_check.enabled: false trains without this check)"
        )

    return say


@contextlib.contextmanager
def _restored(module) -> Iterator[None]:
    """Leave the run as it was: its random streams (LoRA dropout draws from torch's), each submodule's train/eval
    mode, no gradient on any weight, and the training decoder."""
    devices = [module.device.index or 0] if module.device.type == "cuda" else []
    modes = {m: m.training for m in module.modules()}
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        for m, mode in modes.items():
            m.training = mode
        for param in module.parameters():
            param.grad = None
        module._end_pass()


def _train_once(module, shape: Shape, trainer: L.Trainer) -> None:
    """One forward and backward of made-up clips, under the run's precision, as ``training_step`` runs them."""
    generator = torch.Generator().manual_seed(0)
    config = module.model.config
    frames = 2 * math.ceil(shape.seconds * FRAMES_PER_SECOND / 2)
    features = torch.randn(shape.clips, config.num_mel_bins, frames, generator=generator)
    labels = torch.randint(0, config.vocab_size, (shape.clips, max(2, shape.tokens)), generator=generator)
    module.model.train()
    try:
        with trainer.precision_plugin.train_step_context():
            loss = module.model(input_features=features.to(module.device), labels=labels.to(module.device)).loss
        loss.backward()
    finally:
        for param in module.parameters():
            param.grad = None


@torch.no_grad()
def _decode_once(module, shape: Shape) -> None:
    """One ``generate`` of made-up clips up to their whole token budget (never stopped early by an end-of-text),
    with the model the evaluation decodes with (its merged copy built as each pass builds it)."""
    module._begin_pass()
    try:
        decoder = module.decoder
        generator = torch.Generator().manual_seed(0)
        frames = 2 * math.ceil(shape.seconds * FRAMES_PER_SECOND / 2)
        features = torch.randn(shape.clips, decoder.model.config.num_mel_bins, frames, generator=generator)
        durations = [shape.seconds] * shape.clips
        budget = max(decoder.budgets(durations))
        encoded = decoder.encode(features.to(module.device), durations)
        decoder.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
            max_new_tokens=budget,
            min_new_tokens=budget,
            num_beams=decoder.num_beams,
            **decoder.prompt_kwargs(),
        )
    finally:
        module._end_pass()
