"""The fault battery: a corpus with the faults real downloads and hand-made folders have. One bad file never costs a
run: training and evaluation count and name each skip, and transcribe writes every good file and an error record
for every bad one, as soon as each is finished."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor

from tests.conftest import tiny_args, tone, write_tsv
from tests.test_resume import nan_run
from whisper_lora_pl.data.audio import AudioError, audio_duration, load_audio
from whisper_lora_pl.data.features import log_mel
from whisper_lora_pl.data.sources import CommonVoiceFolder, Manifest
from whisper_lora_pl.decoding.decode import Decoded, Decoder, DecodingOutOfMemory
from whisper_lora_pl.takehome.transcribe import Writer, decoder_for, load_model, transcribe
from whisper_lora_pl.takehome.transcribe import main as transcribe_main
from whisper_lora_pl.training.cli import main

RATE = 48_000


def _wave(seconds: float = 1.2, rate: int = RATE, channels: int = 1, freq: float = 330.0) -> np.ndarray:
    return tone(seconds, rate, channels, freq)


def _burst(seconds: float, freq: float) -> np.ndarray:
    """A tone between two 0.1 s stretches of quiet: what the energy split takes for speech (silero-vad does not)."""
    quiet = np.zeros((int(0.1 * RATE), 1), np.float32)
    return np.concatenate([quiet, _wave(seconds - 0.2, freq=freq), quiet])


def _write(path: Path, wave: np.ndarray, rate: int = RATE, **kwargs) -> None:
    sf.write(path, wave, rate, **kwargs)


def _good(clips: Path) -> dict[str, str]:
    """Audio a real corpus holds that must be trained on: odd rates and channel counts, unusual encodings,
    silence, clipping. Returns file name -> reason it is there."""
    square = np.clip(4 * _wave(), -1, 1)  # clipped: flat tops at full scale
    made = {
        "plain.mp3": (_wave(), RATE, {}),
        "phone-8k.wav": (_wave(rate=8_000), 8_000, {}),
        "stereo-44k.flac": (_wave(rate=44_100, channels=2), 44_100, {}),
        "six-channels-22k.wav": (_wave(rate=22_050, channels=6), 22_050, {}),
        "unsigned-8bit.wav": (_wave(), RATE, {"subtype": "PCM_U8"}),
        "pcm-24bit.wav": (_wave(), RATE, {"subtype": "PCM_24"}),
        "float64.wav": (_wave(), RATE, {"subtype": "DOUBLE"}),
        "mu-law.wav": (_wave(rate=8_000), 8_000, {"subtype": "ULAW"}),
        "vorbis.ogg": (_wave(), RATE, {}),
        "silence.wav": (np.zeros((RATE, 1), np.float32), RATE, {}),
        "clipped.wav": (square, RATE, {}),
        "hot-float.wav": (1.5 * _wave(), RATE, {"subtype": "FLOAT"}),  # above full scale, but finite
        "short-0.2s.flac": (_wave(0.2), RATE, {}),
    }
    for name, (wave, rate, kwargs) in made.items():
        _write(clips / name, wave, rate, **kwargs)
    return dict.fromkeys(made, "good")


def _bad(clips: Path) -> dict[str, str]:
    """Faults, each with the reason its skip is counted by. The first ones are found when the headers are read
    (set-up), the non-finite ones only when the clip is decoded (in the worker)."""
    (clips / "empty.mp3").write_bytes(b"")
    (clips / "text.mp3").write_text("this is a text file, not audio\n" * 20)
    _write(clips / "whole.mp3", _wave(2.0))
    (clips / "truncated.mp3").write_bytes((clips / "whole.mp3").read_bytes()[:200])
    (clips / "whole.mp3").unlink()
    _write(clips / "few-ms.wav", _wave(0.005))
    nan, inf, huge = _wave(), _wave(), 1e25 * _wave()
    nan[100:110] = np.nan
    inf[5] = np.inf
    _write(clips / "nan.wav", nan, subtype="FLOAT")
    _write(clips / "inf.wav", inf, subtype="FLOAT")
    _write(clips / "huge.wav", huge, subtype="FLOAT")  # finite samples whose STFT power overflows
    return {
        "empty.mp3": "empty file",
        "text.mp3": "not audio",
        "truncated.mp3": "truncated or corrupt",
        "missing.mp3": "missing file",
        "few-ms.wav": "audio under 0.1 s",
        "nan.wav": "non-finite samples",
        "inf.wav": "non-finite samples",
        "huge.wav": "non-finite features",
    }


#: found only when a worker decodes the clip: the training and evaluation passes count these
DECODE_TIME = {"nan.wav", "inf.wav", "huge.wav"}


@pytest.fixture(scope="module")
def battery(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A Common Voice folder whose train split holds every fault, and a malformed row and an empty sentence."""
    root = tmp_path_factory.mktemp("battery")
    clips = root / "zh-CN" / "clips"
    clips.mkdir(parents=True)
    files = _good(clips) | _bad(clips)
    rows = [{"client_id": "c", "path": name, "sentence": "今天天气很好"} for name in files]
    rows.append({"client_id": "c", "path": "plain.mp3", "sentence": ""})  # empty sentence
    write_tsv(root / "zh-CN" / "train.tsv", rows)
    with (root / "zh-CN" / "train.tsv").open("a", encoding="utf-8") as tsv:
        tsv.write("c\tplain.mp3\n")  # a row with 2 fields where the header has 10
    for split in ("dev", "test"):
        write_tsv(root / "zh-CN" / f"{split}.tsv", rows[:2])
    return root, files


def test_each_fault_is_named_for_what_it_is(battery):
    root, files = battery
    clips = root / "zh-CN" / "clips"
    for name, reason in files.items():
        if reason in ("good", "audio under 0.1 s"):
            assert load_audio(clips / name).size > 0, name
            continue
        with pytest.raises(AudioError) as caught:
            audio_duration(clips / name)
            log_mel(WhisperFeatureExtractor(), load_audio(clips / name))
        assert caught.value.reason == reason, (name, str(caught.value))
        if reason != "non-finite features":  # log_mel does not know the file; its callers name it
            assert name in str(caught.value)
        assert "does not exist" not in str(caught.value)  # libsndfile's words for a file it cannot sniff


def test_malformed_rows_are_named_with_file_and_line(battery, tmp_path):
    root, _ = battery
    examples = CommonVoiceFolder(str(root)).examples("train")
    (bad,) = [e for e in examples if e.problem]
    assert bad.problem == f"{root / 'zh-CN' / 'train.tsv'}:24: 2 fields where the header has 10"
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "x"}\n{"audio": \n["a"]\n{"text": "no audio"}\n')
    problems = [e.problem for e in Manifest({"train": str(manifest)}).examples("train")]
    assert problems[0] is None
    assert problems[1].startswith(f"{manifest}:2: not JSON")
    assert problems[2] == f"{manifest}:3: a JSON list, not an object"
    assert problems[3] == f"{manifest}:4: no audio path in 'audio'"


def _battery_args(tiny_model, root: Path, folder: Path, *extra: str) -> list[str]:
    return tiny_args(tiny_model, root, folder, "--data.train_split=train", *extra)


def test_one_epoch_of_fit_trains_on_exactly_the_good_clips(tiny_model, battery, tmp_path):
    root, files = battery
    good = sum(reason == "good" for reason in files.values())
    with pytest.warns(UserWarning) as warned:
        one_epoch = ["--trainer.max_steps=-1", "--trainer.max_epochs=1", "--trainer.limit_val_batches=0"]
        cli = main(["fit", *_battery_args(tiny_model, root, tmp_path, *one_epoch)])
    prepared = cli.datamodule.prepared["train"]
    at_setup = {name: r for name, r in files.items() if r != "good" and name not in DECODE_TIME}
    expected = {}
    for reason in [*at_setup.values(), "malformed row", "empty text"]:
        expected[reason] = expected.get(reason, 0) + 1
    assert prepared.skipped == expected
    assert len(prepared.examples) == good + len(DECODE_TIME)
    metrics = cli.trainer.callback_metrics
    assert metrics["train/clips"].item() == good
    assert metrics["train/skipped_clips"].item() == len(DECODE_TIME)
    said = [str(w.message) for w in warned if "skipped (" in str(w.message)]
    assert said == [
        f"train: trained on {good} clips; 3 skipped (1 non-finite features, 2 non-finite samples), each "
        "named in the log above"
    ]


def test_validate_scores_the_good_clips_and_says_how_many(tiny_model, battery, tmp_path):
    root, files = battery
    good = sum(reason == "good" for reason in files.values())
    with pytest.warns(UserWarning, match=rf"val: scored {good} clips; 3 skipped \(1 non-finite features, 2 non"):
        every_batch = ["--data.val_split=train", "--trainer.limit_val_batches=1.0"]
        cli = main(["validate", *_battery_args(tiny_model, root, tmp_path, *every_batch)])
    metrics = cli.trainer.callback_metrics
    assert (metrics["val/clips"].item(), metrics["val/skipped_clips"].item()) == (good, 3)
    (records,) = tmp_path.glob("**/predictions/val-*.jsonl")
    assert len(records.read_text().splitlines()) == good


@pytest.fixture(scope="module")
def tiny_decoder(tiny_model):
    model, processor, info = load_model(tiny_model)
    return decoder_for(model, processor, info, language="zh"), processor.feature_extractor


def test_transcribe_writes_every_good_file_and_an_error_for_every_bad_one(tiny_model, battery, tmp_path):
    root, files = battery
    clips = root / "zh-CN" / "clips"
    status = transcribe_main([str(clips), str(clips / "missing.mp3"), "--model", tiny_model, "--language", "zh",
                              "--out", str(tmp_path)])  # fmt: skip
    assert status == 1  # some failed
    lines = [json.loads(line) for line in (tmp_path / "transcripts.jsonl").read_text().splitlines()]
    done = {Path(r["path"]).name for r in lines if "error" not in r}
    errors = {Path(r["path"]).name: r["error"] for r in lines if "error" in r}
    # transcribe takes a clip of a few milliseconds: no sentence is claimed for it
    assert done == {name for name, reason in files.items() if reason in ("good", "audio under 0.1 s")}
    assert errors.keys() == {name for name, reason in files.items() if reason not in ("good", "audio under 0.1 s")}
    assert "empty (0 bytes)" in errors["empty.mp3"] and "not audio" in errors["text.mp3"]
    assert "truncated or corrupt MP3" in errors["truncated.mp3"] and "not found" in errors["missing.mp3"]
    assert "non-finite samples" in errors["inf.wav"] and "log-mel features are not finite" in errors["huge.wav"]
    assert all(str(clips) in error for error in errors.values())


class Flaky(Decoder):
    """Fails on any batch holding a clip of 1.2345 s (as sampling on a bad input can), and, with ``stop_after``,
    raises KeyboardInterrupt at that call, as Ctrl-C would."""

    stop_after: int | None = None
    calls = 0

    def __call__(self, features, durations):
        Flaky.calls += 1
        if self.stop_after is not None and Flaky.calls > self.stop_after:
            raise KeyboardInterrupt
        if any(abs(d - 1.2345) < 1e-3 for d in durations):
            raise RuntimeError("probability tensor contains either `inf`, `nan` or element < 0")
        return super().__call__(features, durations)


def flaky(decoder: Decoder, stop_after: int | None = None) -> Flaky:
    made = Flaky(**{f.name: getattr(decoder, f.name) for f in fields(decoder)})
    made.stop_after, Flaky.calls = stop_after, 0
    return made


@pytest.fixture
def folder(tmp_path) -> list[Path]:
    names = ["a.wav", "b.wav", "poison.wav", "c.wav", "d.wav"]
    for i, name in enumerate(names):
        _write(tmp_path / name, _burst(1.2345 if name == "poison.wav" else 1.0 + 0.1 * i, freq=200 + 40 * i))
    return [tmp_path / name for name in names]


def test_a_failure_inside_a_batch_costs_only_its_clip(tiny_decoder, folder, tmp_path):
    decoder, extractor = tiny_decoder  # the clips are tones: only the energy split takes them for speech
    result = transcribe(folder, flaky(decoder), extractor, batch_size=8, speech="energy")
    assert [Path(r["path"]).name for r in result.records] == ["a.wav", "b.wav", "c.wav", "d.wav"]
    assert list(result.failed) == [str(folder[2])] and "probability tensor" in result.failed[str(folder[2])]
    plain = transcribe(folder[:2] + folder[3:], decoder, extractor, batch_size=8, speech="energy")
    assert [r["text"] for r in result.records] == [r["text"] for r in plain.records]  # the others keep their text


def test_an_interrupted_run_keeps_what_it_finished_and_resume_skips_it(tiny_model, tiny_decoder, folder, tmp_path):
    decoder, extractor = tiny_decoder
    out = tmp_path / "out"
    writer = Writer(out)
    with pytest.raises(KeyboardInterrupt):  # file by file: the 4th decoding (c.wav) is interrupted
        transcribe(folder, flaky(decoder, stop_after=3), extractor, 1, group=1, sink=writer, speech="energy")
    writer.close()
    lines = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert [(Path(r["path"]).name, "error" in r) for r in lines] == [("a.wav", False), ("b.wav", False),
                                                                      ("poison.wav", True)]  # fmt: skip
    kept = lines[:2]
    assert Writer(out, resume=True).done == {str(folder[0]), str(folder[1])}
    folder[2].write_bytes(folder[0].read_bytes())  # the bad file is fixed: --resume tries it again
    args = [*map(str, folder), "--model", tiny_model, "--language", "zh", "--out", str(out), "--resume",
            "--speech", "energy"]  # fmt: skip
    assert transcribe_main(args) == 0
    lines = [json.loads(line) for line in (out / "transcripts.jsonl").read_text().splitlines()]
    assert sorted(Path(r["path"]).name for r in lines) == sorted(p.name for p in folder)
    assert all("error" not in r for r in lines)
    assert lines[:2] == kept  # the earlier run's records stay as they were


def test_a_non_finite_loss_names_the_clips_and_the_fault(tiny_model, cv_release):
    with pytest.raises(FloatingPointError, match=r"the input features of clips \['common_voice_zh-CN_train_\d"):
        nan_run(tiny_model, cv_release, "stop")
    with pytest.raises(FloatingPointError, match=r"on finite input \(clips \['common_voice.*lower the learning rate"):
        nan_run(tiny_model, cv_release, "stop", poison="weights")


def test_predict_keeps_a_record_for_every_clip(tiny_model, battery, tmp_path):
    """Every clip that reached the workers gets a record: its text, or the error that skipped it."""
    root, files = battery
    main(["predict", *_battery_args(tiny_model, root, tmp_path, "--data.predict_split=train")])
    (path,) = tmp_path.glob("**/predictions/predict.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    errors = {r["id"]: r["error"] for r in records if "error" in r}
    assert errors == {name: files[name] for name in DECODE_TIME}
    kept_short = {"few-ms.wav"}  # predict transcribes clips under data.min_duration too
    assert {r["id"] for r in records if "hypothesis" in r} == {n for n, r in files.items() if r == "good"} | kept_short
    assert not list(path.parent.glob("*.partial.jsonl"))  # the partial records are in predict.jsonl now


class Greedy(Decoder):
    """Runs out of memory on any batch of more than ``fits`` clips, as a GPU would."""

    fits = 1

    def __call__(self, features, durations):
        if len(features) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().__call__(features, durations)


def test_running_out_of_memory_in_decoding_is_an_error_that_names_the_setting(tiny_decoder, folder):
    """Never a silent clip-by-clip retry, never a skipped clip: the batch, its size and what to lower."""
    decoder, extractor = tiny_decoder
    greedy = Greedy(**{f.name: getattr(decoder, f.name) for f in fields(decoder)})
    features = torch.zeros(3, 80, 3000)
    with pytest.raises(DecodingOutOfMemory, match=r"batch 7 of 3 clips of up to 2\.0 s: lower --batch-size \(now 3"):
        greedy.isolating(features, [1.0, 2.0, 1.5], "--batch-size", "batch 7")
    with pytest.raises(DecodingOutOfMemory, match="lower --batch-size"):
        transcribe(folder, greedy, extractor, batch_size=8, speech="energy")
    Greedy.fits = 0
    with pytest.raises(DecodingOutOfMemory, match="even one clip does not fit"):
        greedy.isolating(features[:1], [1.0], "--batch-size")
    Greedy.fits = 1
    assert [type(r) for r in greedy.isolating(features[:1], [1.0])] == [Decoded]  # what fits decodes as ever


def test_validation_out_of_memory_stops_the_run_naming_data_eval_batch_size(
    tiny_model, cv_release, tmp_path, monkeypatch
):
    def out_of_memory(self, features, durations):
        if len(features) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, features, durations)

    original = Decoder.__call__
    monkeypatch.setattr(Decoder, "__call__", out_of_memory)
    with pytest.raises(DecodingOutOfMemory, match=r"batch 0 \(common_voice.*lower data\.eval_batch_size \(now 2; 1"):
        main(["validate", *tiny_args(tiny_model, cv_release, tmp_path, "--data.eval_batch_size=2")])
    assert not list(tmp_path.glob("**/predictions/*.jsonl"))  # no CER over the clips that happened to fit
