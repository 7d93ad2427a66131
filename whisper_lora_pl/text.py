"""Transcript normalisation and error rates.

Chinese is written without spaces, so WER over it is close to a sentence error rate: CER is the honest metric
for zh and both are always reported. Normalisation, applied to references and hypotheses alike:

- Chinese (``zh``, ``yue``): traditional -> simplified (Whisper often answers in traditional characters),
  NFKC (full-width letters, digits and punctuation -> half-width), punctuation, symbols and spaces removed.
  CER then compares characters.
- English: Whisper's English normaliser (contractions, numbers, spelling, punctuation).
- any other language: Whisper's basic normaliser (lower case, punctuation and symbols -> spaces).
"""

from __future__ import annotations

import unicodedata
from functools import cached_property

import jiwer
import torch
from torchmetrics import MetricCollection
from torchmetrics.text import CharErrorRate, WordErrorRate
from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

CHINESE = {"zh", "yue", "chinese", "mandarin", "cantonese"}


class TextNormalizer:
    """Language-aware normalisation; see the module docstring for what each language gets."""

    def __init__(self, language: str | None) -> None:
        self.language = (language or "en").lower()

    @cached_property
    def _t2s(self):
        import opencc

        return opencc.OpenCC("t2s")

    @cached_property
    def _whisper(self):
        return EnglishTextNormalizer({}) if self.language in ("en", "english") else BasicTextNormalizer()

    def __call__(self, text: str) -> str:
        if self.language in CHINESE:
            return normalize_chinese(self._t2s.convert(text))
        return " ".join(self._whisper(text).split())


def normalize_chinese(text: str) -> str:
    """Full-width to half-width, then keep letters, digits and CJK only (no punctuation, symbols or spaces)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


class ErrorRates(torch.nn.Module):
    """WER and CER over normalised text, as torchmetrics states (summed edits and lengths: exact under DDP)."""

    def __init__(self, language: str | None, prefix: str) -> None:
        super().__init__()
        self.normalize = TextNormalizer(language)
        self.metrics = MetricCollection({"wer": WordErrorRate(), "cer": CharErrorRate()}, prefix=prefix)

    def update(self, hypotheses: list[str], references: list[str]) -> tuple[list[str], list[str]]:
        """Add a batch; returns the normalised texts (for per-utterance reports)."""
        hyps = [self.normalize(text) for text in hypotheses]
        refs = [self.normalize(text) for text in references]
        self.metrics.update(hyps, refs)
        return hyps, refs


def utterance_rates(hypothesis: str, reference: str) -> dict[str, float | None]:
    """WER and CER of one normalised pair (None where the reference normalises to nothing)."""
    if not reference:
        return {"wer": None, "cer": None}
    return {"wer": jiwer.wer(reference, hypothesis), "cer": jiwer.cer(reference, hypothesis)}
