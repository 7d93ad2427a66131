"""The memory a run will need, read before step 1, and its worst batch run first: an out-of-memory error comes in the
first second of ``fit`` and names the setting to lower, not an hour in at a step drawn at random (the full-window
share, the bucket of the most clips) or at the first validation (the evaluation's merged copy).

:class:`MemoryCheck` is a callback the CLI always adds (``memory_check.enabled: false`` turns it off). Its batches
are made up (random features and labels from a generator of their own, the model's own shapes): the run's random
streams, its data order and its weights are exactly as without it, so resume stays exact. On the CPU it only logs
what the run holds unless ``memory_check.on_cpu`` (the kernel's kill, the CPU's out-of-memory, cannot be caught).
``batch_probe`` runs the same batches at growing sizes to find the largest that fit.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from peft.tuners.lora import LoraLayer
from transformers.modeling_outputs import BaseModelOutput

from whisper_lora_pl.data.features import FRAMES_PER_SECOND
from whisper_lora_pl.decoding.decode import out_of_memory
from whisper_lora_pl.model.merging import QUANTIZED, merged_in_memory

GIB = 2**30


class OutOfMemoryBudget(RuntimeError):
    """The run's worst batch does not fit: the message says which setting to lower, and to what."""


@dataclass(frozen=True)
class Shape:
    """A batch as memory sees it: clips, seconds of encoder input per clip, label tokens per clip."""

    clips: int
    seconds: float
    tokens: int
    longest: float = 0.0  #: seconds of its longest clip (what data.batch_seconds is divided by)

    @property
    def frames(self) -> int:
        """Log-mel frames of its encoder input (an even number, as the encoder's stride-2 convolution takes)."""
        return 2 * math.ceil(self.seconds * FRAMES_PER_SECOND / 2)

    def __str__(self) -> str:
        labels = f" with {self.tokens} label tokens" if self.tokens else ""
        return f"{self.clips} clips of {self.seconds:g} s{labels}"


def worst_training_batch(module, datamodule) -> Shape:
    """The training batch of the most clips, at the longest encoder input it can get: the full window if the
    encoder is padded or a share of steps keeps it (``encoder_full_share``), else its bucket's longest clip; labels
    as long as the split's longest (or the decoder's limit, for packed windows)."""
    hp = module.hparams
    full = hp.encoder_length == "padded" or hp.get("encoder_full_share", 0.0) > 0

    def encoded(longest: float) -> float:  # the dynamic encoder's cut: rounded up to a second, at least its minimum
        cut = max(math.ceil(longest), hp.get("encoder_min_seconds", 0.0))
        return hp.context_seconds if full else min(hp.context_seconds, cut)

    shapes = datamodule.training_batch_shapes()
    return max(
        (Shape(clips, encoded(longest), tokens, longest) for clips, longest, tokens in shapes),
        key=lambda s: (s.clips * s.seconds, s.clips),
    )


class MemoryCheck(L.Callback):
    """At the start of ``fit``: logs what the run holds (quantized base, adapters with their gradients and optimizer
    moments, the evaluation's merged copy), then runs the worst training batch (forward and backward as configured)
    and one ``generate`` of the largest evaluation batch to its whole token budget, and reports the peak memory
    (CUDA's ``max_memory_allocated``; on the CPU the process's resident set, sampled). If either runs out of memory,
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
        self.report = dict(held_bytes(module, datamodule))
        held = ", ".join(f"{name} {size / GIB:.2f} GiB" for name, size in self.report.items())
        if device.type == "cpu" and not self.on_cpu:
            rank_zero_info(f"memory on {device}: {held} (memory_check.on_cpu: true runs the worst batches first)")
            return
        rank_zero_info(f"memory on {device}: {held}; running the worst batches first")
        train = worst_training_batch(module, datamodule)
        ran = [f"training {train}"]
        with left_as_it_was(module):
            advice = _training_advice(datamodule, train)
            self.report["train_peak"] = _fitting(lambda s: train_once(module, s, trainer), train, advice, device)
            if trainer.limit_val_batches != 0 and "val" in datamodule.prepared:
                evaluation = worst_evaluation_batch(module, datamodule)
                advice = _advice("data.eval_batch_size", evaluation.clips, lambda clips: clips)
                self.report["eval_peak"] = _fitting(lambda s: decode_once(module, s), evaluation, advice, device)
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
    dynamic encoder (which decodes each clip at its own length), unless an eval set holds long audio (decoded in
    pieces up to the whole window)."""
    seconds = module.hparams.context_seconds
    long_sets = any(spec.kind == "long" for spec in getattr(datamodule, "eval_sets", {}).values())
    if module.hparams.encoder_length == "dynamic" and not long_sets:
        seconds = min(seconds, math.ceil(max(datamodule.prepared["val"].durations)))
    return Shape(datamodule.eval_batch_size, float(seconds), 0)


def held_bytes(module, datamodule=None) -> dict[str, int]:
    """What the run holds whatever the batch: the frozen base as stored (int8 / 4-bit packed), the adapters with
    their gradients and two optimizer moments (AdamW's), the evaluation's merged copy (``evaluate_merged``), and
    while the eval sets are decoded with other languages routed to the base, the base's own copy."""
    frozen = sum(t.numel() * t.element_size() for t in module.model.parameters() if not t.requires_grad)
    frozen += sum(t.numel() * t.element_size() for t in module.model.buffers())
    trainable = sum(t.numel() * t.element_size() for t in module.model.parameters() if t.requires_grad)
    held = {"frozen base": frozen, "adapters + gradients + optimizer": 4 * trainable}
    quantized = module.hparams.quantization != "none"
    if module.hparams.evaluate_merged and quantized:
        held["evaluation copy"] = _copy_bytes(module)
    if routes_to_base(module, datamodule):
        held["base copy for other languages"] = _copy_bytes(module, wrapped_only=not quantized)
    return held


def routes_to_base(module, datamodule) -> bool:
    """Whether the eval sets' passes build the base beside the evaluation's model
    (``model.decoding.other_languages: base``, ``WhisperLoRA._evaluate_sets``)."""
    routed = module.decoding.other_languages == "base" and bool(module.hparams.language)
    return routed and bool(getattr(datamodule, "eval_sets", None))


def _copy_bytes(module, wrapped_only: bool = False) -> int:
    """Bytes of a copy ``merged_in_memory`` builds in the evaluation's dtype: every dequantized layer is new, the rest
    shared when already in that dtype (float32), copied otherwise; of an unquantized base, the layers the adapters
    wrap are copied (their weights must not be merged into) and the rest shared or cast likewise."""
    dtype = module.evaluation_dtype()
    size = torch.empty((), dtype=dtype).element_size()
    if wrapped_only:
        wrapped = [m.get_base_layer() for m in module.model.modules() if isinstance(m, LoraLayer)]
        copied = {id(layer.weight) for layer in wrapped}
        dense = sum(layer.weight.numel() for layer in wrapped)
        others = [t for t in module.model.parameters() if not t.requires_grad and id(t) not in copied]
        return dense * size + sum(t.numel() * size for t in others if t.dtype != dtype)
    dense = sum(m.in_features * m.out_features for m in module.model.modules() if isinstance(m, QUANTIZED))
    others = sum(t.numel() for t in module.model.parameters() if t.dtype.is_floating_point and not t.requires_grad)
    return dense * size + (others * size if dtype != torch.float32 else 0)


def _fitting(run: Callable[[Shape], None], shape: Shape, advice: Callable[[Shape, Shape | None], str], device) -> float:
    """Run ``shape`` and return its peak; if it runs out of memory, find the most clips that fit and raise the
    advice for them."""
    peak = peak_or_none(run, shape, device)
    if peak is not None:
        return peak
    fits = largest_fitting(run, shape, device, ceiling=shape.clips - 1, fails=shape.clips)
    raise OutOfMemoryBudget(advice(shape, replace(shape, clips=fits) if fits else None))


def largest_fitting(
    run: Callable[[Shape], None], shape: Shape, device, ceiling: int, fails: int | None = None, limit: float = math.inf
) -> int:
    """The most clips of ``shape`` (at most ``ceiling``) that ``run`` takes without running out of memory (or over
    ``limit`` bytes at its peak), 0 if not one: NeMo's OOMptimizer's search. Doubling from 1 while they fit (from
    half of ``fails``, a count known to fail, when given), halving while they do not, then bisection between the
    last count that fit and the first that did not."""
    fits, clips = 0, max(1, fails // 2) if fails else 1
    while True:
        if peak_or_none(run, replace(shape, clips=clips), device, limit) is not None:
            fits = clips
            if fails is not None:
                break
            if clips >= ceiling:
                return ceiling
            clips = min(ceiling, 2 * clips)
        else:
            fails = clips
            if fits or clips == 1:
                break
            clips //= 2
    while fits and fails - fits > 1:
        middle = (fits + fails) // 2
        if peak_or_none(run, replace(shape, clips=middle), device, limit) is not None:
            fits = middle
        else:
            fails = middle
    return fits


def peak_or_none(run: Callable[[Shape], None], shape: Shape, device, limit: float = math.inf) -> float | None:
    """The peak bytes of ``run(shape)``, or None if it ran out of memory (or its peak passed ``limit``)."""
    try:
        with Peak(device) as peak:
            run(shape)
    except Exception as err:
        if not out_of_memory(err):
            raise
        err.with_traceback(None)  # its frames hold the batch's tensors
        return None
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return peak.highest if peak.highest <= limit else None


class Peak:
    """The highest memory in use while the block runs: CUDA's peak allocation, or on the CPU the process's resident
    set sampled every 5 ms by a thread (``ru_maxrss`` only ever grows, so it cannot tell one batch's peak)."""

    def __init__(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.start = self.highest = 0

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = self.highest = torch.cuda.memory_allocated(self.device)
            return self
        self.start = self.highest = resident_bytes()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.highest = max(self.highest, resident_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.highest = torch.cuda.max_memory_allocated(self.device)
        else:
            self._running = False
            self._thread.join()
            self.highest = max(self.highest, resident_bytes())

    @property
    def added(self) -> int:
        return self.highest - self.start


def resident_bytes() -> int:
    """This process's resident set now (Linux)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_name(device) -> str:
    return "allocated" if device.type == "cuda" else "resident"


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
def left_as_it_was(module) -> Iterator[None]:
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


def train_once(module, shape: Shape, trainer: L.Trainer) -> None:
    """One forward and backward of made-up clips, under the run's precision, as ``training_step`` runs them."""
    generator = torch.Generator().manual_seed(0)
    config = module.model.config
    frames = shape.frames
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
def decode_once(module, shape: Shape) -> None:
    """One ``generate`` of made-up clips up to their whole token budget (never stopped early by an end-of-text),
    with the model the evaluation decodes with (its merged copy built as each pass builds it)."""
    module._begin_pass()
    datamodule = getattr(module._trainer, "datamodule", None) if module._trainer is not None else None
    # the eval sets' passes hold the base beside the evaluation's model while they decode: so does this batch
    base = merged_in_memory(module.model, module.evaluation_dtype(), adapters=False) if routes_to_base(
        module, datamodule) else None  # fmt: skip
    try:
        decoder = module.decoder
        generator = torch.Generator().manual_seed(0)
        frames = shape.frames
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
        del base
        module._end_pass()
