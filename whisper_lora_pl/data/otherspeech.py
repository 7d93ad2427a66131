"""Speech in other languages than the trained one, labelled by the base model itself, mixed into training.

Fine-tuning on one language teaches the decoder to answer every clip in it: after the demo's 20 steps of Mandarin,
whisper-base's English long files went from 0.04 to 0.65 CER and no English clip was detected as English any more.
Routing other languages to the base at inference (``model.decoding.other_languages: base``) keeps them where the base
sits beside the adapters; a merged folder, a CTranslate2 or a ggml export holds one model and cannot route. Training on
a share of clips in other languages, each labelled with what the base writes for it (its words, its mistakes and its
language token after ``<|startoftranscript|>``), asks the adapters to leave that behaviour as it was: a
sequence-level distillation from the base, with no second model in memory.

The labels come from the one decoding, run on the base as users run it: ``transcribe --model <base> --language en
--out DIR AUDIO`` writes ``DIR/transcripts.jsonl``, which is read here as it is (``audio_column: path``); the demo's
were made so by ``scripts/make_other_speech.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from whisper_lora_pl.data.sources import Example, Manifest, whisper_language


@dataclass(frozen=True)
class OtherSpeech:
    """Clips in other languages, labelled by the base, for a share of the training clips.

    Args:
        manifest: JSONL, CSV or TSV of audio, the base's text and (per row, or ``language`` for all) the language;
            relative audio paths from the manifest's folder.
        share: the part of each epoch's training clips drawn from it: ``share / (1 - share)`` clips of it per
            clip of the training split, its rows taken in order and cycled through when there are fewer (rows past
            that count are not used). The epoch grows by as many clips, and so does the step count.
        language: the language of rows that do not say (a Whisper code, or a name: ``English``).
        audio_column: column (or JSON key) of the audio path (``path`` for ``transcribe``'s JSONL).
        text_column: column of the base's text.
        language_column: column of each row's language.
    """

    manifest: str
    share: float = 0.2
    language: str | None = None
    audio_column: str = "audio"
    text_column: str = "text"
    language_column: str = "language"

    def __post_init__(self) -> None:
        if not 0.0 < self.share < 1.0:
            raise ValueError(f"data.other_speech.share must be in (0, 1), not {self.share}")

    def examples(self) -> list[Example]:
        """The manifest's rows, each with its Whisper language code; a row whose language is not given (by it or by
        ``language``) or not Whisper's is a problem (a counted skip): the prompt of its labels needs one."""
        source = Manifest({"other": self.manifest}, self.audio_column, self.text_column, self.language_column)
        out = []
        for example in source.read_split("other"):
            stated = example.language or self.language
            code = whisper_language(stated) if stated else None
            if not example.problem and not code:
                what = f"language {stated!r} is not one of Whisper's" if stated else "no language"
                hint = "" if stated else " (give data.other_speech.language)"
                example = replace(example, problem=f"{self.manifest}: {example.id}: {what}{hint}", reason=what)
            out.append(replace(example, language=code))
        return out

    def count(self, clips: int) -> int:
        """Clips of other speech in an epoch of ``clips`` training clips."""
        return round(self.share / (1.0 - self.share) * clips)
