"""The one routine that turns log-mel features into text: evaluation, predict, transcribe and export all use it.

- Prompt: ``<|startoftranscript|><|lang|><|task|><|notimestamps|>``, the prefix the labels carry in training, with
  the language and task of the training run; never detected unless the caller asks (``language="auto"``).
- Token budget: each clip may write ``min_tokens + tokens_per_second x its duration`` tokens (capped by
  ``max_new_tokens`` and the decoder's positions), so a loop costs a few dozen tokens, not 448, and is *seen*:
  a clip that reaches its budget never wrote end-of-text.
- Loop guard, as OpenAI's ``transcribe``: an output that hit its budget or whose zlib compression ratio is
  above ``compression_ratio_threshold`` (a repetition) is decoded again at the next temperature of
  ``temperatures``; so is one whose average log-probability is below ``logprob_threshold``, if that is set.
  It is off by default: on a fine-tuned model a low log-probability means an uncertain clip, not a loop, and
  sampling such clips again did not help (demo checkpoint, 48 test clips: with -1.0, OpenAI's value, 4 clips were
  retried, none of them a loop, CER 0.5301 -> 0.5324, `train.py test` 92 s -> 142 s). When every attempt
  fails, the best one is kept (faster-whisper's rule: not a loop if possible, then the highest log-probability),
  not the last one.
  Sampling draws from a generator seeded by ``seed``, inside ``torch.random.fork_rng``, one clip at a time: a clip
  gets the same text every time, whatever clips share its batch or its rank, and the training's random stream is
  left untouched.

Each clip's outcome (tokens, budget, temperature used, compression ratio, log-probability, whether it looped)
comes back with the text, so evaluation can count loops instead of averaging them away.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase
from transformers.modeling_outputs import BaseModelOutput

from whisper_lora_pl.data.features import TIME_STEP

#: seconds of audio Whisper's encoder sees at once (its positions: 1500 frames of 20 ms)
WINDOW_SECONDS = 30.0


def prompt_length(language: str | None, task: str | None, timestamps: bool = False) -> int:
    """Tokens the decoder reads before the first text token: ``<|startoftranscript|>``, the language (given, or
    detected with ``auto``), the task, and ``<|notimestamps|>`` unless the model times its segments. 4 for a
    multilingual model's clips, 2 for an English-only model's (no language, no task), as its tokenizer's
    ``prefix_tokens`` spell them (a test checks both on real tokenizers)."""
    return 1 + bool(language) + bool(task) + (not timestamps)


@dataclass(frozen=True)
class DecodingSettings:
    """How every path decodes (OpenAI's defaults for the guard).

    Args:
        tokens_per_second: token budget per second of audio: twice the 224 tokens per 30 s window OpenAI allows.
        min_tokens: tokens every clip may write whatever its length.
        temperatures: the fallback ladder; the first entry (0 = greedy or beam search) is tried first.
        compression_ratio_threshold: an output whose UTF-8 text compresses (zlib) by more than this is a loop.
        logprob_threshold: an output whose average token log-probability is below this is retried too (OpenAI
            uses -1.0; off by default, see the module docstring).
        seed: seed of the fallback's sampling.
        other_languages: ``adapters`` decodes every language with the fine-tuned model; ``base`` routes speech in
            another language than the trained one to the base (the adapters off), which knows it as it did before
            fine-tuning: audio with another language given (``--language en``) goes to the base, and with the
            language left to the model (``auto``) the base detects it and the trained language alone goes to the
            adapters. Needs the base beside the merged weights: the evaluation, ``transcribe --checkpoint`` and
            ``--adapter`` have it; a merged folder or a CTranslate2 export cannot carry it.
        timestamps: how long audio is cut and its cues timed (``transcribe --timestamps`` overrides it): ``model``,
            window after window with the model's own timestamps; ``pauses``, in pieces cut at pauses, each piece
            decoded as a clip and timed by the speech in it; ``auto``, ``model`` for a run trained on timestamp
            labels (``data.timestamp_share``), ``pauses`` otherwise. Clips are always decoded without timestamps.
        detect_with: with ``other_languages: base`` and the language left to the model, which model detects it:
            ``base``, or ``adapters`` (the fine-tuned model: one that trained on other speech labelled by the base,
            ``data.other_speech``, knows both the trained language and the others, where a base may not know the
            trained one's accent or voices).
    """

    tokens_per_second: float = 15.0
    min_tokens: int = 16
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    compression_ratio_threshold: float | None = 2.4
    logprob_threshold: float | None = None
    seed: int = 0
    other_languages: Literal["adapters", "base"] = "adapters"
    timestamps: Literal["auto", "model", "pauses"] = "auto"
    detect_with: Literal["base", "adapters"] = "base"

    def budget(self, seconds: float, cap: int) -> int:
        """Tokens a clip of ``seconds`` may write, at most ``cap``."""
        return max(1, min(cap, math.ceil(self.min_tokens + self.tokens_per_second * seconds)))


@dataclass
class Decoded:
    """One clip's result and how it was reached."""

    text: str
    tokens: list[int] = field(repr=False)
    budget: int
    hit_budget: bool  #: stopped by the budget without writing end-of-text
    temperature: float  #: of the kept attempt: above 0 when the guard caught the first one
    compression_ratio: float
    avg_logprob: float
    looped: bool  #: the kept output still hit the budget or is still a repetition
    attempts: int = 1  #: decodings made: more than 1 when the guard retried the clip
    #: with timestamps: (start, end, text) per segment the model timed, seconds into the window; an end of None
    #: is a segment the window cut before the model closed it
    segments: list[tuple[float, float | None, str]] = field(default_factory=list, repr=False)
    #: the language of the prompt it was decoded with: the one asked for, or the one the model detected
    language: str | None = None

    def report(self) -> dict:
        """What evaluation files record per utterance."""
        keep = (
            "budget",
            "hit_budget",
            "temperature",
            "compression_ratio",
            "avg_logprob",
            "looped",
            "attempts",
            "language",
        )
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items() if k in keep} | {
            "new_tokens": len(self.tokens)
        }


def compression_ratio(text: str) -> float:
    """OpenAI's repetition measure: bytes of the UTF-8 text over bytes of its zlib compression."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


@dataclass
class Decoder:
    """Decode batches of log-mel features the same way everywhere.

    Args:
        model: a Whisper (plain, merged, or a PeftModel over a quantized base).
        tokenizer: its tokenizer (for the text).
        language: Whisper language code of the prompt, ``"auto"`` to detect it, None for English-only models.
        task: ``transcribe`` or ``translate`` (None for English-only models).
        num_beams: beam width of the first attempt (the fallback samples).
        max_new_tokens: most tokens per clip whatever its duration.
        settings: budget and loop guard.
    """

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    language: str | None
    task: str | None
    num_beams: int = 1
    max_new_tokens: int = 448
    settings: DecodingSettings = DecodingSettings()
    timestamps: bool = False  #: let the model time its segments (a run trained with ``data.timestamp_share``)
    #: give a dynamic encoder the whole window, never a cut one: long audio's windows, which transformers' and
    #: faster-whisper's long-form decoding pad to the full window (``transcribe --timestamps model`` sets it)
    whole_windows: bool = False
    #: (the base model, the language the adapters were trained on): speech in another language is decoded by the
    #: base (``DecodingSettings.other_languages: base``); None decodes every language with ``model``
    route: tuple[torch.nn.Module, str] | None = None

    def prompt_kwargs(self) -> dict:
        """``generate`` arguments of the prompt: the trained language and task, and no timestamp tokens (the
        labels carried ``<|notimestamps|>``: timestamp mode is another task for a fine-tuned model) unless the
        decoder is asked for them (``timestamps``, for a run that trained on timestamp labels)."""
        kwargs: dict = {"return_timestamps": self.timestamps}
        if self.language and self.language != "auto":
            kwargs["language"] = self.language
        if self.task:
            kwargs["task"] = self.task
        return kwargs

    def budgets(self, durations: Sequence[float]) -> list[int]:
        limit = int(self.model.config.max_target_positions) - prompt_length(self.language, self.task, self.timestamps)
        return [self.settings.budget(float(d), min(self.max_new_tokens, limit)) for d in durations]

    @torch.no_grad()
    def __call__(self, input_features: torch.Tensor, durations: Sequence[float]) -> list[Decoded]:
        """Decode a batch; ``durations`` (seconds of audio per clip) set the token budgets. With a dynamic encoder
        the clips of each cut length (their own duration rounded up to a second) are decoded together, so a
        clip's encoder input, and its text, never depend on the clips that share its batch: the evaluation's CER
        does not move with the batch size, and ``transcribe`` of one file gives the evaluation's text."""
        if self.route is not None:
            return self._routed(input_features, durations)
        cut = self._cut()
        if cut is None:
            return self._decode(input_features, durations)
        lengths = [cut(input_features[row : row + 1], [d]).shape[-1] for row, d in enumerate(durations)]
        results: list[Decoded | None] = [None] * len(lengths)
        for length in sorted(set(lengths)):
            rows = [row for row, own in enumerate(lengths) if own == length]
            decoded = self._decode(input_features[rows], [durations[row] for row in rows])
            for row, result in zip(rows, decoded, strict=True):
                results[row] = result
        return results

    def detector(self) -> torch.nn.Module:
        """The model that detects the language when routing (``DecodingSettings.detect_with``)."""
        return self.route[0] if self.settings.detect_with == "base" else self.model

    def _routed(self, input_features: torch.Tensor, durations: Sequence[float]) -> list[Decoded]:
        """Speech in the trained language through the adapters, any other through the base (``route``), which sees
        whole windows, as it was pretrained (a dynamic encoder's cut lengths are what the adapters learned: the
        demo's base wrote 0.34 CER on the English long files at them, 0.12 at whole windows)."""
        base_model, trained = self.route
        base = replace(self, model=base_model, route=None, whole_windows=True)
        tuned = replace(self, route=None, language=trained)
        if self.language != "auto":
            return (tuned if self.language == trained else base)(input_features, durations)
        # the base (or the adapters: detect_with) detects each clip's language in one decoder step, and each clip is
        # decoded in it as if given: the trained language by the adapters, any other by the base
        detected = detect_languages(self.detector(), self.tokenizer, input_features)
        results: list[Decoded | None] = [None] * len(detected)
        for language in dict.fromkeys(detected):
            rows = [row for row, found in enumerate(detected) if found == language]
            decoder = tuned if language == trained else replace(base, language=language)
            for row, result in zip(rows, decoder(input_features[rows], [durations[r] for r in rows]), strict=True):
                results[row] = result
        return results

    def _decode(self, input_features: torch.Tensor, durations: Sequence[float]) -> list[Decoded]:
        """Decode clips whose encoder inputs are cut alike: once greedy, then the loop guard's fallbacks."""
        budgets = self.budgets(durations)
        attempts: list[list[Decoded]] = [[] for _ in budgets]
        pending = list(range(len(budgets)))
        encoded = self.encode(input_features, durations)  # once: the fallback's retries decode the same encoder states
        for step, temperature in enumerate(self.settings.temperatures or (0.0,)):
            if temperature > 0:  # each clip samples alone, from the same seed: its draws never depend on its batch
                results = [self._sampled(encoded[row : row + 1], budgets[row], temperature, step) for row in pending]
            else:  # greedy (or beam search) draws nothing
                results = self._generate(encoded[pending], [budgets[i] for i in pending], temperature)
            for row, result in zip(pending, results, strict=True):
                attempts[row].append(result)
            pending = [row for row in pending if self._fails(attempts[row][-1])]
            if not pending:
                break
        return [self._choose(tries) for tries in attempts]

    def _sampled(self, encoded: torch.Tensor, budget: int, temperature: float, step: int) -> Decoded:
        """One clip's sampled attempt, repeatable (seeded by ``seed`` and the attempt) and its own: a batch samples
        all its rows from one generator, so a clip's draw would move with the clips beside it (and the CER with the
        batch size and the number of DDP ranks)."""
        with torch.random.fork_rng(devices=_cuda_devices(encoded)):
            torch.manual_seed(self.settings.seed + step)
            return self._generate(encoded, [budget], temperature)[0]

    def isolating(
        self, input_features: torch.Tensor, durations: Sequence[float], lower: str = "the batch size", what: str = ""
    ) -> list[Decoded | Exception]:
        """Decode a batch; if that raises, decode its clips one by one, so a failure costs only the clip behind it
        (its place holds the exception). Evaluation, predict and transcribe call this. Running out of memory is no
        clip's fault: it raises :class:`DecodingOutOfMemory`, naming the batch (``what``) and the setting to
        ``lower``, instead of skipping clips or retrying them one by one without a word."""
        try:
            return self(input_features, durations)
        except CLIP_ERRORS as err:
            self._raise_if_out_of_memory(err, input_features, durations, lower, what)
            if len(input_features) == 1:
                return [err]
        results: list[Decoded | Exception] = []
        for row in range(len(input_features)):
            try:
                results.extend(self(input_features[row : row + 1], durations[row : row + 1]))
            except CLIP_ERRORS as err:
                self._raise_if_out_of_memory(err, input_features, durations, lower, what)
                results.append(err)
        return results

    def _raise_if_out_of_memory(
        self, err: Exception, input_features: torch.Tensor, durations: Sequence[float], lower: str, what: str
    ) -> None:
        if not out_of_memory(err):
            return
        clips = len(input_features)
        where = self.model.get_encoder().conv1.weight.device
        advice = f"lower {lower} (now {clips}; {max(1, clips // 2)} halves the decoding's activations)"
        if clips == 1:
            advice = f"even one clip does not fit: free memory on {where} or decode on another device"
        raise DecodingOutOfMemory(
            f"out of memory on {where} decoding {what or 'a batch'} of {clips} clips of up to "
            f"{max(durations, default=0.0):.1f} s: {advice}"
        ) from err

    def _fails(self, result: Decoded) -> bool:
        threshold = self.settings.logprob_threshold
        return result.looped or (threshold is not None and result.avg_logprob < threshold)

    def _choose(self, tries: list[Decoded]) -> Decoded:
        """The attempt that passed, else the most probable one that is not a loop, else the most probable."""
        if self._fails(tries[-1]):
            chosen = max([t for t in tries if not t.looped] or tries, key=lambda t: t.avg_logprob)
        else:
            chosen = tries[-1]
        return replace(chosen, attempts=len(tries))

    def encode(self, input_features: torch.Tensor, durations: Sequence[float]) -> torch.Tensor:
        """The encoder's states for a batch of log-mel features: of the full window, or (a model made with
        ``encoder_length: dynamic``) of the frames given. ``generate`` then starts from them, as it does from
        features (it would pad shorter features to 30 s with zeros, which is not silence). A dynamic encoder gets
        the batch cut after its longest clip (``durations``; ``__call__`` passes clips of one cut length), so
        evaluation, predict and transcribe cut alike."""
        encoder = self.model.get_encoder()
        weight = encoder.conv1.weight
        if cut := self._cut():  # a dynamic encoder (model.DynamicLengthEncoder)
            input_features = cut(input_features, durations)
        return encoder(input_features.to(device=weight.device, dtype=weight.dtype)).last_hidden_state

    def _cut(self):
        """The dynamic encoder's cut (``model.DynamicLengthEncoder.cut``), None for a full-window one."""
        return None if self.whole_windows else getattr(self.model.get_encoder(), "cut", None)

    def _generate(self, encoded: torch.Tensor, budgets: list[int], temperature: float) -> list[Decoded]:
        """One ``generate`` over the batch up to its largest budget; each row is then cut at its own budget
        (the first N tokens of a longer decoding are what a decoding stopped at N would have written)."""
        sampling = temperature > 0
        # the batch's largest budget: as max_length (Whisper's generate counts it after the prompt), unless the
        # model's own generation config names max_new_tokens (an exported folder's cap, for transformers' pipeline),
        # which would take precedence over it; transformers then warns that both are set (load_model clears it)
        cap = "max_new_tokens" if self.model.generation_config.max_new_tokens is not None else "max_length"
        config = GenerationConfig(
            **{cap: max(budgets)},
            num_beams=1 if sampling else self.num_beams,
            return_dict_in_generate=True,
            output_logits=True,  # per row, beams included (Whisper's generate follows beam_indices)
            # one model call for the whole batch: otherwise a row that writes two timestamp tokens (sampling can,
            # even after <|notimestamps|>) is decoded again from there, and generate returns that call's rows only
            force_unique_generate_call=True,
        )
        out = self.model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
            generation_config=config,
            temperature=temperature,  # Whisper's own argument: it samples exactly when this is above 0
            **self.prompt_kwargs(),
        )
        prompt_length = out.sequences.shape[1] - len(out.logits)
        new = out.sequences[:, prompt_length:]  # after the prompt
        languages = self._languages(out.sequences[:, :prompt_length])
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1).gather(-1, new[..., None])[..., 0]
        eos = self.model.generation_config.eos_token_id
        threshold = self.settings.compression_ratio_threshold
        results = []
        for row, budget in enumerate(budgets):
            tokens = new[row, :budget].tolist()
            hit = eos not in tokens  # rows that ended are padded with end-of-text, so this is never padding
            kept = tokens if hit else tokens[: tokens.index(eos)]
            scored = len(kept) + (0 if hit else 1)  # OpenAI's average: the kept tokens and the end-of-text
            avg = float(logprobs[row, :scored].sum()) / max(1, scored)
            text = self.tokenizer.decode(kept, skip_special_tokens=True)
            ratio = compression_ratio(text)
            looped = hit or (threshold is not None and ratio > threshold)
            segments = self.segments(kept) if self.timestamps else []
            decoded = Decoded(
                text, kept, budget, hit, temperature, ratio, avg, looped, segments=segments, language=languages[row]
            )
            results.append(decoded)
        return results

    def _languages(self, prompts: torch.Tensor) -> list[str | None]:
        """Each row's language code from its prompt (``<|zh|>`` -> ``zh``): asked for, or detected by ``generate``
        when the language was left to the model; None for English-only models, whose prompt names none."""
        codes = {
            int(i): token[2:-2]
            for token, i in (getattr(self.model.generation_config, "lang_to_id", None) or {}).items()
        }
        return [next((codes[t] for t in row if t in codes), None) for row in prompts.tolist()]

    def segments(self, tokens: list[int]) -> list[tuple[float, float | None, str]]:
        """The timed segments of a decoding, OpenAI's format: ``<|start|> text <|end|>`` (a segment's end and the
        next one's start come as two timestamps in a row); text after the last timestamp has no end."""
        first = self.tokenizer.convert_tokens_to_ids("<|0.00|>")
        found: list[tuple[float, float | None, str]] = []
        start, text = 0.0, []
        for token in tokens:
            if token < first:
                text.append(token)
                continue
            seconds = (token - first) * TIME_STEP
            if text:
                found.append((start, seconds, self.tokenizer.decode(text, skip_special_tokens=True).strip()))
                text = []
            start = seconds
        if text:
            found.append((start, None, self.tokenizer.decode(text, skip_special_tokens=True).strip()))
        return [s for s in found if s[2]]


#: what one clip's decoding may raise (a tensor op refusing its input); out of memory is a RuntimeError too, and
#: ``isolating`` turns it into :class:`DecodingOutOfMemory` before anything else; other errors (a bug, Ctrl-C) pass
CLIP_ERRORS = (RuntimeError, ValueError, IndexError, MemoryError)


@torch.no_grad()
def detect_languages(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_features: torch.Tensor) -> list:
    """The language code of each window of ``input_features`` (whole 30 s windows), by Whisper's own detection:
    the language token most probable after ``<|startoftranscript|>``, one decoder step (what ``generate`` does
    before decoding with the language left to the model)."""
    parameter = next(model.parameters())
    ids = model.detect_language(input_features=input_features.to(parameter.device, parameter.dtype))
    return [tokenizer.convert_ids_to_tokens(int(i)).strip("<|>") for i in ids.reshape(-1)]


class DecodingOutOfMemory(RuntimeError):
    """Decoding ran out of memory: an error naming the setting to lower, never a skipped clip."""


def out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is the device (or the CPU allocator) running out of memory rather than a fault of the input."""
    if isinstance(err, torch.OutOfMemoryError | MemoryError):
        return True
    message = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def _cuda_devices(tensor: torch.Tensor) -> list[int]:
    return [tensor.device.index or 0] if tensor.is_cuda else []
