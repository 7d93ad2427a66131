"""Scoring long audio against reference segments: what a person reading the subtitles meets.

The joined text's CER says whether the words came out; it cannot say whether they came out under the right cue. So
each reference segment (a sentence, with its start and end) is also scored against:
- the cue that overlaps it most: how far that cue's start and end are from the segment's (a cue that holds four
  sentences is off by their length; a segment no cue overlaps counts its whole length, both ends);
- the text of the cues placed on it: a cue belongs to the segment its middle falls in (else to the one it overlaps
  most), and the segment's CER is taken against their joined text, so a file cut into the right number of cues whose
  texts belong to other sentences scores as badly as it reads;
- cues per segment; and the characters of cues that overlap no segment at all (text made up on silence or noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Segment = tuple[float, float, str]


@dataclass
class LongScore:
    """One file's scores: per reference segment, the cue errors and the text placed on it."""

    start_errors: list[float] = field(default_factory=list)
    end_errors: list[float] = field(default_factory=list)
    texts_under: list[str] = field(default_factory=list)
    cues: int = 0
    silence_chars: int = 0


def score_cues(cues: list[dict], segments: list[Segment] | tuple[Segment, ...], joiner: str = "") -> LongScore:
    """Score ``cues`` (``{"start", "end", "text"}``, seconds from the file's start) against reference ``segments``."""
    said = [c for c in cues if c["text"].strip()]
    score = LongScore(cues=len(said))
    placed: list[list[str]] = [[] for _ in segments]
    for cue in said:
        overlaps = [_overlap(cue, s) for s in segments]
        middle = (cue["start"] + cue["end"]) / 2
        home = next((i for i, (a, b, _) in enumerate(segments) if a <= middle <= b), None)
        if home is None and max(overlaps, default=0.0) > 0:
            home = max(range(len(segments)), key=overlaps.__getitem__)
        if home is None:
            score.silence_chars += len("".join(cue["text"].split()))
        else:
            placed[home].append(cue["text"].strip())
    for (start, end, _), texts in zip(segments, placed, strict=True):
        score.texts_under.append(joiner.join(texts))
        overlaps = [_overlap(c, (start, end, "")) for c in said]
        if not said or max(overlaps) == 0:
            score.start_errors.append(end - start)
            score.end_errors.append(end - start)
            continue
        cue = said[max(range(len(said)), key=overlaps.__getitem__)]
        score.start_errors.append(abs(cue["start"] - start))
        score.end_errors.append(abs(cue["end"] - end))
    return score


def _overlap(cue: dict, segment: Segment) -> float:
    return max(0.0, min(cue["end"], segment[1]) - max(cue["start"], segment[0]))
