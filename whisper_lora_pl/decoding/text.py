"""Transcript normalisation and error rates.

CER is the honest metric for Chinese and both rates are always reported. Chinese is written without spaces, so
its WER counts words from jieba's segmentation (over unsegmented text it would be a sentence error rate, ~1.0).
Normalisation, applied to references and hypotheses alike:

- Chinese (``zh``, ``yue``): traditional -> simplified (Whisper often answers in traditional characters),
  NFKC (full-width letters, digits and punctuation -> half-width), numerals to Arabic digits (cn2an: ``十万`` and
  ``10万`` both become ``100000``, ``二〇二六`` becomes ``2026``; a lone ``一`` stays, as in ``一个``, ``一起``),
  punctuation, symbols and spaces removed. CER then compares characters.
- English: Whisper's English normaliser (contractions, numbers, spelling, punctuation).
- any other language: Whisper's basic normaliser (lower case, punctuation and symbols -> spaces).
"""

from __future__ import annotations

import logging
import re
import unicodedata
import warnings
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
            return arabic_numerals(normalize_chinese(self._t2s.convert(text)))
        return " ".join(self._whisper(text).split())

    def words(self, normalized: str) -> list[str]:
        """The words WER counts: jieba's segmentation for Chinese, whitespace-separated tokens otherwise."""
        if self.language in CHINESE:
            return [word for word in _jieba().cut(normalized) if word.strip()]
        return normalized.split()


def normalize_chinese(text: str) -> str:
    """Full-width to half-width, then keep letters, digits and CJK only (no punctuation, symbols or spaces)."""
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if unicodedata.category(ch)[0] in "LN")


_NUMERALS = "零〇一二两三四五六七八九十百千万亿点"
_LONE_ONE = re.compile(rf"(?<![{_NUMERALS}\d])一(?![{_NUMERALS}\d])")
_KEEP = "\ue000"  # a private-use character cn2an leaves alone
_UNITS = {"百": 100, "千": 1_000, "万": 10_000, "亿": 100_000_000}
_MIXED = re.compile(r"(\d+(?:\.\d+)?)([百千万亿]+)")


def arabic_numerals(text: str) -> str:
    """Chinese numerals as Arabic digits (cn2an), and mixed forms too (``10万`` -> ``100000``)."""
    import cn2an

    text = _LONE_ONE.sub(_KEEP, text)  # 一个, 一起, 一样, ...: a word, not a number; Whisper writes it so too
    with warnings.catch_warnings():  # cn2an warns for each numeral-like word it leaves alone (万一, ...)
        warnings.simplefilter("ignore")
        text = cn2an.transform(text, "cn2an").replace(_KEEP, "一")

    def expand(match: re.Match) -> str:
        value = float(match.group(1))
        for unit in match.group(2):
            value *= _UNITS[unit]
        return f"{value:.10g}" if value != int(value) else str(int(value))

    return _MIXED.sub(expand, text)


def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # it logs the building of its dictionary on first use
    return jieba


class ErrorRates(torch.nn.Module):
    """WER and CER over normalised text, as torchmetrics states (summed edits and lengths: exact under DDP)."""

    def __init__(self, language: str | None, prefix: str) -> None:
        super().__init__()
        self.normalize = TextNormalizer(language)
        self.wer, self.cer = WordErrorRate(), CharErrorRate()
        # no compute groups: the two see different strings (words for WER, characters for CER)
        self.metrics = MetricCollection({"wer": self.wer, "cer": self.cer}, prefix=prefix, compute_groups=False)

    def update(self, hypotheses: list[str], references: list[str]) -> tuple[list[str], list[str]]:
        """Add a batch; returns the normalised texts (for per-utterance reports)."""
        hyps = [self.normalize(text) for text in hypotheses]
        refs = [self.normalize(text) for text in references]
        self.wer.update(self._spaced(hyps), self._spaced(refs))
        self.cer.update(hyps, refs)
        return hyps, refs

    def _spaced(self, texts: list[str]) -> list[str]:
        return [" ".join(self.normalize.words(text)) for text in texts]

    def utterance(self, hypothesis: str, reference: str) -> dict[str, float | None]:
        """WER and CER of one normalised pair (None where the reference normalises to nothing)."""
        if not reference:
            return {"wer": None, "cer": None}
        hyp, ref = self._spaced([hypothesis])[0], self._spaced([reference])[0]
        return {"wer": jiwer.wer(ref, hyp), "cer": jiwer.cer(reference, hypothesis)}
