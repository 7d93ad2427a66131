"""The tutorial's pipeline, re-created faithfully with today's APIs, as the baseline for benchmarks/compare.py.

What the tutorial does, step by step, and what had to change:
- `load_dataset("mozilla-foundation/common_voice_11_0", "zh-CN")`: gone from the hub (404), and datasets 4+
  decodes audio through torchcodec. Here the same Common Voice TSVs become a `datasets.Dataset`, and the `.map`
  decodes each clip with soundfile + soxr (exactly as our pipeline does, so decoding costs the same).
- `.map(prepare_dataset)` precomputes `input_features` (80 x 3000 float32 log-mel, ~1 MB per clip) and `labels`
  for every clip and writes them to the datasets cache on disk: kept as is.
- `DataCollatorSpeechSeq2SeqWithPadding`: kept, with the decoder-start check of the current HF blog.
- `load_in_8bit=True` -> `BitsAndBytesConfig(load_in_8bit=True)`; `prepare_model_for_int8_training` ->
  `prepare_model_for_kbit_training` (its defaults, as the tutorial had); LoRA r=8 alpha=64 dropout 0.05 on
  q_proj/v_proj; `Seq2SeqTrainer` with `remove_unused_columns=False, label_names=["labels"]`.
- evaluation: its loop over a DataLoader of batch 8 with `generate(input_features, decoder_input_ids=prompt,
  max_new_tokens=...)`. The tutorial's prompt was `labels[:, :4]`, i.e. <|startoftranscript|><|zh|><|transcribe|>
  <|notimestamps|>, because its collator compared against `bos_token_id` (<|endoftext|>) and never cut the start
  token; with the start token cut (as in training here, and in ours) those four tokens are the start token and
  `labels[:, :3]`. Using `labels[:, :4]` as is would prompt with <|zh|>... and leak the first reference token.
  Then WER through `evaluate` (jiwer underneath; `evaluate.load` needs the hub, so the
  error rates here come from the same normaliser and torchmetrics code as ours, to compare like with like).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    BitsAndBytesConfig,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainerCallback,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from whisper_lora_pl.data.audio import load_audio


@dataclass
class DataCollatorSpeechSeq2SeqWithPadding:
    processor: Any
    decoder_start_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_features = [{"input_features": feature["input_features"]} for feature in features]
        batch = self.processor.feature_extractor.pad(input_features, return_tensors="pt")
        label_features = [{"input_ids": feature["labels"]} for feature in features]
        labels_batch = self.processor.tokenizer.pad(label_features, return_tensors="pt")
        labels = labels_batch["input_ids"].masked_fill(labels_batch.attention_mask.ne(1), -100)
        if (labels[:, 0] == self.decoder_start_token_id).all().cpu().item():
            labels = labels[:, 1:]
        batch["labels"] = labels
        return batch


def common_voice(folder: Path, cache_dir: Path) -> datasets.DatasetDict:
    """The release's TSVs as an on-disk dataset, as the hub's was: `.map` then writes its cache files beside it."""
    files = {split: str(folder / f"{split}.tsv") for split in ("train", "test")}
    return datasets.load_dataset("csv", data_files=files, sep="\t", quoting=csv.QUOTE_NONE, cache_dir=str(cache_dir))


class StepClock(TrainerCallback):
    def __init__(self, t0: float) -> None:
        self.t0, self.step_ends, self.losses, self.first_begin = t0, [], [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first_begin is None:
            self.first_begin = time.perf_counter() - self.t0

    def on_step_end(self, args, state, control, **kwargs):
        self.step_ends.append(time.perf_counter() - self.t0)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(logs["loss"])


def run(
    t0: float,
    model_name: str,
    corpus: Path,
    out: Path,
    cache_dir: Path,
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    seed: int,
    max_new_tokens: int,
    eval_batch_size: int = 8,
    workers: int = 0,
    language: str = "zh",
    fixed_length: bool = False,
    evaluate: bool = True,
) -> dict:
    processor = WhisperProcessor.from_pretrained(model_name, language=language, task="transcribe")
    feature_extractor, tokenizer = processor.feature_extractor, processor.tokenizer

    folder = corpus / "zh-CN"

    def prepare_dataset(batch):
        audio = load_audio(folder / "clips" / batch["path"])
        batch["input_features"] = feature_extractor(audio, sampling_rate=16_000).input_features[0]
        batch["labels"] = tokenizer(batch["sentence"]).input_ids
        return batch

    raw = common_voice(folder, cache_dir)
    tokenized = raw.map(prepare_dataset, remove_columns=raw["train"].column_names)

    model = WhisperForConditionalGeneration.from_pretrained(
        model_name, quantization_config=BitsAndBytesConfig(load_in_8bit=True), device_map={"": "cpu"}
    )
    model.config.forced_decoder_ids = None
    model.config.suppress_tokens = []
    model = prepare_model_for_kbit_training(model)
    model = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], lora_dropout=0.05, bias="none")
    )
    collator = DataCollatorSpeechSeq2SeqWithPadding(processor, model.config.decoder_start_token_id)
    clock = StepClock(t0)
    args = Seq2SeqTrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        warmup_steps=warmup_steps,
        max_steps=steps,
        logging_steps=1,
        save_strategy="no",
        eval_strategy="no",
        report_to=[],
        remove_unused_columns=False,
        label_names=["labels"],
        seed=seed,
        use_cpu=True,
        dataloader_num_workers=workers,
        disable_tqdm=True,
    )
    trainer = Seq2SeqTrainer(
        model=model, args=args, train_dataset=tokenized["train"], data_collator=collator, callbacks=[clock]
    )
    trainer.train()
    if not evaluate:
        return {"first_batch": clock.first_begin, "step_ends": clock.step_ends, "losses": clock.losses}

    from whisper_lora_pl.decoding.text import ErrorRates

    loader = torch.utils.data.DataLoader(
        tokenized["test"], batch_size=eval_batch_size, collate_fn=collator, num_workers=workers
    )
    model.eval()

    def evaluate(**generate_kwargs) -> tuple[dict, float]:
        rates = ErrorRates(language, prefix="test/")
        began = time.perf_counter()
        for batch in loader:
            with torch.no_grad():
                start = torch.full((len(batch["labels"]), 1), collator.decoder_start_token_id)
                tokens = model.generate(
                    input_features=batch["input_features"],
                    decoder_input_ids=torch.cat([start, batch["labels"][:, :3]], dim=1),
                    max_new_tokens=max_new_tokens,
                    **generate_kwargs,
                )
            labels = batch["labels"].masked_fill(batch["labels"] == -100, tokenizer.pad_token_id)
            rates.update(
                tokenizer.batch_decode(tokens, skip_special_tokens=True),
                tokenizer.batch_decode(labels, skip_special_tokens=True),
            )
        return {k: v.item() for k, v in rates.metrics.compute().items()}, time.perf_counter() - began

    metrics, eval_seconds = evaluate()
    # the second pass, generating exactly max_new_tokens per clip, times the pipeline alone
    fixed_seconds = evaluate(min_new_tokens=max_new_tokens)[1] if fixed_length else None
    return {
        "first_batch": clock.first_begin,
        "step_ends": clock.step_ends,
        "losses": clock.losses,
        "eval_seconds": eval_seconds,
        "fixed_eval_seconds": fixed_seconds,
        "eval_clips": len(tokenized["test"]),
        **metrics,
    }
