"""Packed training windows: consecutive clips of the shuffled split joined into one window up to the encoder's
context, with short random silences between them and, in a share of the windows, each clip's text between its start
and end timestamp tokens, as OpenAI's format has it. A model trained only on single short clips meets long audio
(several sentences in a 30 s window) and subtitles (timestamps) for the first time at inference; distil-whisper packs
clips the same way (``--concatenate_audio``, ``timestamp_probability``).

Every window of an epoch, its clips, its pauses and whether it carries timestamps, is a pure function of (seed,
epoch), on every rank, so a resumed run replays them exactly (as
:class:`~whisper_lora_pl.data.buckets.DurationBuckets`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from whisper_lora_pl.data.audio import SAMPLING_RATE, AudioError, load_audio
from whisper_lora_pl.data.buckets import DurationBuckets
from whisper_lora_pl.data.dataset import SpeechDataset
from whisper_lora_pl.data.features import TIME_STEP, log_mel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Window:
    """The clips of one training window (indices into the split) and the seed of its pauses and timestamps."""

    clips: tuple[int, ...]
    seed: int


class PackedWindows(DurationBuckets):
    """Yields this rank's batches of :class:`Window` for one epoch.

    Each epoch the split is shuffled (from ``seed`` and the epoch) and cut, in that order, into batches of
    ``batch_size`` windows of consecutive clips whose durations plus the longest possible pauses fit the batch's
    length and whose texts (plus two timestamp tokens each) fit the decoder's ``max_label_length`` tokens; a clip
    longer than that is a window alone. The batch's length is ``context`` seconds with ``fill="full"``; with
    ``fill="mixed"`` it is drawn for each batch, uniformly between 0 (a clip a window) and ``context``: a dynamic
    encoder, cut after a batch's longest window, then meets inputs as short as the evaluation's single clips, cut
    just after their speech, as well as full windows (trained on full windows only, it repeats a clip's sentence
    until the cut input ends: test CER 1.61 on the demo after 20 steps, against 0.55 mixed). An epoch always has as
    many batches as epoch 0 (Lightning reads the epoch's length once), so another epoch's order may drop its last
    batches or take its first ones again. A step takes ``num_replicas`` consecutive batches, rank r the r-th."""

    def __init__(
        self,
        durations: Sequence[float],
        text_tokens: Sequence[int],
        *,
        batch_size: int,
        context: float,
        longest_pause: float,
        max_label_length: int,
        prompt_length: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        current_epoch: Callable[[], int] = lambda: 0,
        fill: Literal["mixed", "full"] = "full",
    ) -> None:
        if fill not in ("mixed", "full"):
            raise ValueError(f"fill must be 'mixed' or 'full', got {fill!r}")
        self.fill = fill
        self.text_tokens = np.asarray(text_tokens)
        self.context, self.longest_pause, self.max_label_length = context, longest_pause, max_label_length
        self.prompt_length = prompt_length
        shards = {"num_replicas": num_replicas, "rank": rank, "seed": seed, "current_epoch": current_epoch}
        super().__init__(durations, batch_size, num_buckets=1, **shards)
        self.count = len(self.windows(0))
        batches = math.ceil(self.count / batch_size)
        self.batches = [math.ceil(batches / num_replicas) * num_replicas]

    def windows(self, epoch: int) -> list[Window]:
        """Epoch ``epoch``'s windows in training order, ``batch_size`` to a batch (before the fixed count of
        batches is applied)."""
        rng = np.random.default_rng([self.seed, epoch, 1])
        order = rng.permutation(len(self.durations)).tolist()
        # mixed: one length a batch, from a stream of its own (the order and the pauses do not depend on the fill)
        limits = np.random.default_rng([self.seed, epoch, 2])
        windows: list[list[int]] = []
        seconds = tokens = 0.0
        limit = self.context
        # the prompt, <|endoftext|>, and two timestamps a clip (<|notimestamps|> takes the place of one)
        budget = self.max_label_length - self.prompt_length - 1
        for clip in order:
            length, text = float(self.durations[clip]), int(self.text_tokens[clip]) + 2
            if windows and seconds + self.longest_pause + length <= limit and tokens + text <= budget:
                windows[-1].append(clip)
                seconds += self.longest_pause + length
                tokens += text
            else:
                if self.fill == "mixed" and len(windows) % self.batch_size == 0:
                    limit = float(limits.uniform(0.0, self.context))
                windows.append([clip])
                seconds, tokens = length, text
        seeds = rng.integers(0, 2**62, size=len(windows))
        return [Window(tuple(clips), int(s)) for clips, s in zip(windows, seeds, strict=True)]

    def steps(self, epoch: int) -> list[list[list[Window]]]:
        windows = self.windows(epoch)
        batches = [windows[i : i + self.batch_size] for i in range(0, len(windows), self.batch_size)]
        total = self.batches[0]
        batches = [batches[i % len(batches)] for i in range(total)]  # the epoch's count; no rank without a window
        return [batches[i : i + self.num_replicas] for i in range(0, total, self.num_replicas)]


class PackedSpeech(Dataset):
    """One :class:`Window` decoded into one item: its clips' audio joined with pauses drawn at random between
    ``pauses[0]`` and ``pauses[1]`` seconds, its labels the clips' texts joined, between timestamp tokens in a
    ``timestamp_share`` of the windows and after ``<|notimestamps|>`` in the others. A clip that fails to load is
    left out of its window (and listed under ``skipped``); a window whose clips all fail is a skipped item."""

    def __init__(
        self,
        clips: SpeechDataset,
        *,
        pauses: tuple[float, float],
        timestamp_share: float,
        no_timestamps_id: int,
        end_id: int,
        prompt_length: int,
    ) -> None:
        self.clips, self.pauses, self.timestamp_share = clips, pauses, timestamp_share
        self.prompt_length = prompt_length  # <|startoftranscript|><|lang|><|task|>: the labels before <|notimestamps|>
        self.no_timestamps_id, self.end_id = no_timestamps_id, end_id
        self.first_timestamp_id = no_timestamps_id + 1

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, window: Window | int) -> dict:
        if isinstance(window, int):  # a sequential sampler (overfit_batches): a window of one clip
            window = Window((window,), window)
        split = self.clips.split
        rng = np.random.default_rng(window.seed)
        timestamps = bool(rng.random() < self.timestamp_share)
        waves, labels, skipped, t = [], [], {}, 0.0
        for clip in window.clips:
            pause = rng.uniform(*self.pauses) if waves else 0.0
            example = split.examples[clip]
            try:
                wave = load_audio(example.audio, SAMPLING_RATE)
            except AudioError as err:
                log.warning("skipping clip %s: %s", example.id, err)
                skipped[example.id] = err.reason
                continue
            ids = split.labels[clip]
            prompt, text = ids[: self.prompt_length], ids[self.prompt_length + 1 : -1]  # no <|notimestamps|>, end
            if not labels:
                labels = list(prompt) + ([] if timestamps else [self.no_timestamps_id])
            silence = np.zeros(round(pause * SAMPLING_RATE), np.float32)
            waves += [silence, wave]
            start = t + len(silence) / SAMPLING_RATE
            t = start + len(wave) / SAMPLING_RATE
            labels += [self._stamp(start), *text, self._stamp(t)] if timestamps else text
        first = window.clips[0]
        if not waves:
            return {"index": first, "id": split.examples[first].id, "skip": next(iter(skipped.values()))}
        audio = np.concatenate(waves)
        try:
            features = log_mel(self.clips.feature_extractor, audio)
        except AudioError as err:
            return {"index": first, "id": split.examples[first].id, "skip": err.reason}
        return {
            "input_features": features,
            "labels": [*labels, self.end_id],
            "duration": len(audio) / SAMPLING_RATE,
            "index": first,
            "id": "+".join(split.examples[c].id for c in window.clips),
            "clips": len(waves) // 2,
            "skipped": skipped,
        }

    def _stamp(self, seconds: float) -> int:
        return self.first_timestamp_id + round(seconds / TIME_STEP)
