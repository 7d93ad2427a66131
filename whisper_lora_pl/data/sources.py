"""Where examples come from. Each source turns a split expression such as ``train+dev`` into examples.

A source is picked in YAML by ``class_path``; ``prepare()`` downloads (called on one process only),
``examples(split)`` reads what is on disk (called on every process).
"""

from __future__ import annotations

import csv
import json
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from whisper_lora_pl.data.audio import AudioSpan, DecodedAudio, StoredAudio

log = logging.getLogger(__name__)

#: the columns of a Common Voice 11 TSV (later releases add ``variant``, ``sentence_id``, ``sentence_domain``)
CV11_COLUMNS = [
    "client_id",
    "path",
    "sentence",
    "up_votes",
    "down_votes",
    "age",
    "gender",
    "accents",
    "locale",
    "segment",
]

#: Common Voice calls its validation split ``dev``; the tutorial (and the HF hub) say ``validation``.
SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev"}


@dataclass(frozen=True)
class Example:
    """One utterance: ``audio`` is a file path, encoded bytes or a reference to stored audio
    (:class:`~whisper_lora_pl.data.audio.StoredAudio`, a span of a file, audio another library decodes), decoded
    later in a DataLoader worker. ``problem`` names a row that could not be read (file and line): the data module counts
    it as a skip under ``reason`` and logs it. ``duration`` is the clip's length where a manifest states it (no header
    is read then: a corpus in remote shards is not opened before training); ``language`` the language a manifest
    states (a clip in another language than the run's is a counted skip)."""

    audio: str | bytes | StoredAudio | AudioSpan | DecodedAudio
    sentence: str
    id: str
    problem: str | None = None
    reason: str = "malformed row"
    duration: float | None = None
    language: str | None = None


def malformed(where: str, what: str, reason: str = "malformed row") -> Example:
    """A placeholder for a manifest or TSV row that cannot be read, so it is counted, not silently lost."""
    return Example("", "", where, problem=f"{where}: {what}", reason=reason)


class Source(ABC):
    """Base class: subclasses read one kind of corpus."""

    def prepare(self) -> None:  # noqa: B027 (optional hook: most sources have nothing to fetch)
        """Download or unpack once; the default has nothing to fetch."""

    def card_dataset(self) -> dict[str, str]:
        """How a model card names this corpus (the Hub's ``model-index`` wants a dataset ``type`` and ``name``)."""
        return {"type": type(self).__name__, "name": type(self).__name__}

    @abstractmethod
    def splits(self) -> list[str]:
        """Names of the splits this source offers."""

    @abstractmethod
    def read_split(self, split: str) -> list[Example]:
        """All examples of one named split (already validated against ``splits()``)."""

    def examples(self, expression: str) -> list[Example]:
        """Examples of ``a+b+...``, in order; an unknown split name is an error that lists the known ones."""
        out: list[Example] = []
        for part in (p.strip() for p in expression.split("+")):
            out.extend(self.read_split(self.resolve_split(part)))
        return out

    def resolve_split(self, name: str) -> str:
        known = self.splits()
        if name in known:
            return name
        if SPLIT_ALIASES.get(name) in known:
            return SPLIT_ALIASES[name]
        raise ValueError(f"{type(self).__name__}: unknown split {name!r}; this source has {sorted(known)}")


def _require_columns(where: str, columns: list[str] | None, needed: dict[str, str]) -> None:
    """``needed`` maps the role of a column (audio, text) to the name the config gave it."""
    have = list(columns or [])
    for role, name in needed.items():
        if name not in have:
            raise ValueError(f"{where}: no {role} column {name!r}; columns are {have}")


class CommonVoiceFolder(Source):
    """A Common Voice release on disk: ``<root>/<locale>/clips/*.mp3`` beside ``train.tsv``, ``dev.tsv``, ...

    Args:
        root: the release folder (``cv-corpus-11.0-2022-09-21``) or the locale folder itself.
        locale: the Common Voice locale, e.g. ``zh-CN``.
        text_column: the TSV column with the transcript.
    """

    def __init__(self, root: str, locale: str = "zh-CN", text_column: str = "sentence") -> None:
        self.root = Path(root).expanduser()
        self.locale = locale
        self.text_column = text_column

    def card_dataset(self) -> dict[str, str]:
        return {"type": "common_voice", "name": f"Common Voice {self.locale} ({self.root.name})", "config": self.locale}

    @property
    def folder(self) -> Path:
        nested = self.root / self.locale
        return nested if nested.is_dir() else self.root

    def splits(self) -> list[str]:
        folder = self.folder
        if not folder.is_dir():
            raise FileNotFoundError(
                f"Common Voice folder not found: {folder}. Download the {self.locale} release and set "
                "data.source.init_args.root to the folder that holds clips/ and train.tsv."
            )
        return sorted(p.stem for p in folder.glob("*.tsv"))

    def read_split(self, split: str) -> list[Example]:
        path = self.folder / f"{split}.tsv"
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            _require_columns(str(path), reader.fieldnames, {"audio": "path", "text": self.text_column})
            clips = self.folder / "clips"
            width = len(reader.fieldnames or [])
            out = []
            for row in reader:
                fields = _fields(row)
                if fields != width or not row["path"]:
                    what = f"{fields} fields where the header has {width}" if fields != width else "no clip path"
                    out.append(malformed(f"{path}:{reader.line_num}", what))
                    continue
                out.append(Example(str(clips / row["path"]), row[self.text_column] or "", row["path"]))
            return out


class DataCollective(CommonVoiceFolder):
    """A Common Voice release fetched from the Mozilla Data Collective (``pip install datacollective``).

    The client reads the API key from ``MDC_API_KEY`` (or a ``.env`` file). The archive is downloaded and
    unpacked once into ``download_dir``; afterwards this behaves exactly like :class:`CommonVoiceFolder`.

    Args:
        dataset_id: the dataset's id or slug, from its page on the Data Collective.
        download_dir: where the archive and the unpacked release live.
        locale: the Common Voice locale, e.g. ``zh-CN``.
        text_column: the TSV column with the transcript.
    """

    def __init__(
        self, dataset_id: str, download_dir: str, locale: str = "zh-CN", text_column: str = "sentence"
    ) -> None:
        super().__init__(download_dir, locale, text_column)
        self.dataset_id = dataset_id

    def prepare(self) -> None:
        if self._find_release() is not None:
            return
        try:
            import datacollective
        except ImportError as err:
            raise ImportError("DataCollective needs the client: pip install 'whisper-lora-pl[mdc]'") from err
        self.root.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s from the Mozilla Data Collective into %s", self.dataset_id, self.root)
        try:
            datacollective.download_dataset(self.dataset_id, download_directory=str(self.root), extract=True)
        except Exception as err:
            raise RuntimeError(
                f"Mozilla Data Collective download of {self.dataset_id!r} failed: {err}. Set MDC_API_KEY to the "
                "key from your dashboard and accept the dataset's terms on its page first."
            ) from err
        if self._find_release() is None:
            raise FileNotFoundError(f"the archive of {self.dataset_id!r} holds no {self.locale}/train.tsv")

    @property
    def folder(self) -> Path:
        found = self._find_release()
        if found is None:
            raise FileNotFoundError(f"{self.dataset_id!r} is not in {self.root} yet: run `fit` (prepare_data) first")
        return found

    def _find_release(self) -> Path | None:
        if not self.root.is_dir():
            return None
        hits = sorted(self.root.glob(f"**/{self.locale}/train.tsv"))
        return hits[0].parent if hits else None


class HubDataset(Source):
    """Any Hugging Face hub dataset (or local dataset folder) through ``datasets.load_dataset``.

    Audio is read undecoded (path or bytes) and decoded by soundfile in the workers, so no torchcodec is needed.

    Args:
        name: hub name or local path given to ``load_dataset``.
        config: dataset configuration (e.g. a language code).
        audio_column: column with the audio.
        text_column: column with the transcript.
        revision: git revision on the hub.
    """

    def __init__(
        self,
        name: str,
        config: str | None = None,
        audio_column: str = "audio",
        text_column: str = "sentence",
        revision: str | None = None,
    ) -> None:
        self.name, self.config, self.revision = name, config, revision
        self.audio_column, self.text_column = audio_column, text_column

    def card_dataset(self) -> dict[str, str]:
        return {"type": self.name, "name": self.name} | ({"config": self.config} if self.config else {})

    def _load(self, split: str | None = None):
        import datasets

        return datasets.load_dataset(self.name, self.config, split=split, revision=self.revision)

    def prepare(self) -> None:
        self._load()  # downloads and caches every split

    def splits(self) -> list[str]:
        return list(self._load().keys())

    def read_split(self, split: str) -> list[Example]:
        import datasets
        import pyarrow.compute as pc

        ds = self._load(split)
        _require_columns(
            f"{self.name} [{split}]", ds.column_names, {"audio": self.audio_column, "text": self.text_column}
        )
        ds = ds.cast_column(self.audio_column, datasets.Audio(decode=False))
        audio = ds.select_columns([self.audio_column])
        paths = pc.struct_field(ds.data.column(self.audio_column), "path").to_pylist()  # no audio bytes read
        return [
            Example(HubAudio(audio, self.audio_column, i, path or f"{split}-{i}"), text or "", path or f"{split}-{i}")
            for i, (path, text) in enumerate(zip(paths, ds[self.text_column], strict=True))
        ]


class HubAudio:
    """One row's audio in a datasets table. The examples hold this, not the bytes: a table backed by the
    datasets cache pickles as a reference to its memory-mapped files, so neither this process nor each DataLoader
    worker keeps a copy of the corpus's audio."""

    __slots__ = ("column", "name", "row", "table")

    def __init__(self, table, column: str, row: int, name: str) -> None:
        self.table, self.column, self.row, self.name = table, column, row, name

    def read(self) -> str | bytes:
        value = self.table[self.row][self.column]
        return value.get("bytes") or value["path"]

    def __str__(self) -> str:
        return self.name


class Manifest(Source):
    """CSV, TSV or JSONL files, one per split; relative audio paths are taken from the file's folder.

    Args:
        files: split name -> manifest path, e.g. ``{train: data/train.jsonl, test: data/test.jsonl}``.
        audio_column: column (or JSON key) with the audio path.
        text_column: column (or JSON key) with the transcript; None for audio-only lists (``predict``).
        language_column: column (or JSON key) with each clip's language, where a row may state one (a clip in
            another language than the run's is then a counted skip); rows without it say nothing.
    """

    def __init__(
        self,
        files: dict[str, str],
        audio_column: str = "audio",
        text_column: str | None = "text",
        language_column: str | None = None,
    ) -> None:
        self.files = {split: Path(path).expanduser() for split, path in files.items()}
        self.audio_column, self.text_column, self.language_column = audio_column, text_column, language_column

    def splits(self) -> list[str]:
        return list(self.files)

    def read_split(self, split: str) -> list[Example]:
        path = self.files[split]
        if not path.is_file():
            raise FileNotFoundError(f"manifest for split {split!r} not found: {path}")
        rows, columns = read_rows(path)
        needed = {"audio": self.audio_column} | ({"text": self.text_column} if self.text_column else {})
        _require_columns(str(path), columns, needed)
        out = []
        for line, row in rows:
            where = f"{path}:{line}"
            if isinstance(row, str):
                out.append(malformed(where, row))
                continue
            value = row.get(self.audio_column)
            if not isinstance(value, str) or not value:
                out.append(malformed(where, f"no audio path in {self.audio_column!r}"))
                continue
            audio = Path(value).expanduser()
            audio = audio if audio.is_absolute() else path.parent / audio
            text = row.get(self.text_column) if self.text_column else ""
            language = row.get(self.language_column) if self.language_column else None
            language = language if isinstance(language, str) and language.strip() else None
            out.append(Example(str(audio), text if isinstance(text, str) else "", value, language=language))
        return out


def read_rows(path: Path) -> tuple[list[tuple[int, dict | str]], list[str]]:
    """(line number, row) pairs and the columns; a row that cannot be read is the string that says why."""
    rows: list[tuple[int, dict | str]] = []
    if path.suffix in (".jsonl", ".json"):
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                rows.append((number, f"not JSON ({err})"))
                continue
            rows.append((number, row if isinstance(row, dict) else f"a JSON {type(row).__name__}, not an object"))
        return rows, sorted({key for _, row in rows if isinstance(row, dict) for key in row})
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t" if path.suffix == ".tsv" else ",")
        width = len(reader.fieldnames or [])
        for row in reader:
            fields = _fields(row)
            rows.append((reader.line_num, row if fields == width else f"{fields} fields where the header has {width}"))
        return rows, list(reader.fieldnames or [])


def _fields(row: dict) -> int:
    """How many fields a ``csv.DictReader`` row really had: missing ones are None, extra ones sit under None."""
    return sum(value is not None for key, value in row.items() if key is not None) + len(row.get(None) or [])


#: ISO 639-3 and Common Voice codes corpora use for languages Whisper names otherwise
LANGUAGE_ALIASES = {"cmn": "zh", "zho": "zh", "chi": "zh", "eng": "en", "yue": "yue", "fra": "fr", "deu": "de"}


def whisper_language(stated: str) -> str | None:
    """The Whisper code of a language as a manifest states it (``Chinese``, ``zh-CN``, ``cmn``, ``Mandarin``, ``en``);
    None when Whisper has no such language (then nothing is checked)."""
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    word = stated.strip().lower().replace("_", "-")
    for candidate in (word, word.split("-")[0]):
        if candidate in LANGUAGES:
            return candidate
        if candidate in TO_LANGUAGE_CODE:
            return TO_LANGUAGE_CODE[candidate]
        if candidate in LANGUAGE_ALIASES:
            return LANGUAGE_ALIASES[candidate]
    return None
