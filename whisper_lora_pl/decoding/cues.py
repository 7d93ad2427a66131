"""Subtitle cues a person can read, each timed by what placed it: the model's timestamps or the piece it was decoded
from, never by a share of its text.

The model times segments (``transcribe --timestamps model``) or pauses cut pieces (``--timestamps pauses``, of the
training clips' length). A cue's text goes on lines of at most 42 columns (16 Chinese or Japanese characters, the
subtitle guides' figure), broken where the text breaks best (after punctuation near the middle, else at a space,
else between two CJK characters, never inside a word). A cue is cut in time only when asked (``transcribe
--max-cue-seconds 7 --max-cue-width 84``, the guides' limits): its parts are then timed in proportion to their share
of the text, an estimate the audio does not back, which is why it is off by default.
"""

from __future__ import annotations

import unicodedata

#: seconds a cue may last, by the guides (Netflix's, the BBC's): the limit ``--max-cue-seconds`` opts into
MAX_SECONDS = 7.0
#: columns a cue may take, two lines of 42: the limit ``--max-cue-width`` opts into
MAX_WIDTH = 84.0
#: columns of one line; a CJK character takes 42 / 16 of them (16 per line)
LINE_WIDTH = 42.0
CJK_WIDTH = 42 / 16
#: a cut after one of these is preferred when it falls in the middle 60% of the text
PUNCTUATION = set("，。！？；：、,.!?;:…)）」』】\"'")


def width(text: str) -> float:
    """Columns ``text`` takes on screen: wide (CJK, full-width) characters count ``CJK_WIDTH``."""
    return sum(CJK_WIDTH if unicodedata.east_asian_width(c) in "WF" else 1.0 for c in text)


def readable(chunks: list[dict], max_seconds: float = 0.0, max_width: float = 0.0) -> list[dict]:
    """``chunks`` with every cue over ``max_seconds`` or ``max_width`` split, its time shared by its text (0, the
    default, turns a limit off: each cue keeps the time it was decoded with); a cut cue's parts keep its other
    fields."""
    out: list[dict] = []
    for chunk in chunks:
        out.extend(_split(chunk, max_seconds, max_width))
    return out


def _split(chunk: dict, max_seconds: float, max_width: float) -> list[dict]:
    text = chunk["text"].strip()
    long = max_seconds > 0 and chunk["end"] - chunk["start"] > max_seconds
    wide = max_width > 0 and width(text) > max_width
    cut = _cut(text) if text and (long or wide) else None
    if cut is None:
        return [chunk]
    left, right = text[:cut].strip(), text[cut:].strip()
    share = width(left) / (width(left) + width(right))
    middle = round(chunk["start"] + share * (chunk["end"] - chunk["start"]), 3)
    return [
        *_split(chunk | {"text": left, "end": middle}, max_seconds, max_width),
        *_split(chunk | {"text": right, "start": middle}, max_seconds, max_width),
    ]


def _cut(text: str) -> int | None:
    """Where to cut ``text`` in two: after punctuation in its middle 60% if any, else at the space or the border of
    a CJK character nearest its middle; None when no cut leaves text on both sides."""
    total = width(text)
    before = 0.0
    punctuated, plain = [], []
    for i, c in enumerate(text[:-1]):
        before += width(c)
        after = text[i + 1]
        if c in PUNCTUATION and after not in PUNCTUATION:
            punctuated.append((abs(before - total / 2), i + 1))
        if c.isspace() or after.isspace() or _wide(c) or _wide(after):
            plain.append((abs(before - total / 2), i + 1))
    central = [p for p in punctuated if p[0] <= 0.3 * total]
    best = min(central or plain or punctuated, default=None)
    if best is None:
        return None
    left, right = text[: best[1]].strip(), text[best[1] :].strip()
    return best[1] if left and right else None


def _wide(c: str) -> bool:
    return unicodedata.east_asian_width(c) in "WF" and c not in PUNCTUATION


def lines(text: str, line_width: float = LINE_WIDTH) -> str:
    """``text`` broken into lines of at most ``line_width`` columns where it breaks best (a word longer than a line
    keeps its line)."""
    text = text.strip()
    cut = _cut(text) if width(text) > line_width else None
    if cut is None:
        return text
    return f"{lines(text[:cut], line_width)}\n{lines(text[cut:], line_width)}"
