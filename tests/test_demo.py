"""The learning check and the take-home check: real whisper-base, int8 + LoRA, the shipped Mandarin corpus,
held-out sentences and voices. One fine-tuning run (about 3 minutes on 2 CPU cores) serves both."""

import csv
import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
from lightning.pytorch import Callback
from peft import PeftConfig, PeftModel
from transformers import (
    AutomaticSpeechRecognitionPipeline,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
    AutoTokenizer,
    BitsAndBytesConfig,
    pipeline,
)

from tests.conftest import REPO
from whisper_lora_pl.data.audio import load_audio
from whisper_lora_pl.decoding.decode import compression_ratio
from whisper_lora_pl.decoding.text import ErrorRates
from whisper_lora_pl.model.build import set_context
from whisper_lora_pl.takehome.deploy import faster_whisper_kwargs
from whisper_lora_pl.takehome.export import RunInfo, export, pipeline_kwargs
from whisper_lora_pl.takehome.transcribe import decoder_for, load_model, transcribe
from whisper_lora_pl.training.cli import main

CORPUS = REPO / "data" / "demo-zh-CN"
DEMO_CER, SEED_SPREAD = 0.535, 0.07  # the demo's test CER after training (as shipped, seed 0), and one seed's spread
TEST_TSV = CORPUS / "zh-CN" / "test.tsv"


class EvaluationClock(Callback):
    """Seconds spent in each validation pass (the loop over the test split: featurizing and decoding)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_validation_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, module) -> None:
        self.seconds.append(time.perf_counter() - self._start)


@pytest.fixture(scope="module")
def demo(tmp_path_factory, request):
    """configs/demo.yaml as the README runs it (one epoch, 30 steps of up to 8 clips: 160 Mandarin, 40 English), keeping
    last.ckpt; at the encoder
    context of ``--demo-context`` (30 s unless given)."""
    folder = tmp_path_factory.mktemp("demo")
    context = request.config.getoption("--demo-context")
    last_only = folder / "last-only.yaml"
    last_only.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {folder / 'checkpoints'}, save_last: true, save_top_k: 0}}\n"
    )
    clock = EvaluationClock()
    cli = main(
        [
            "--config",
            str(REPO / "configs" / "demo.yaml"),
            "--config",
            str(last_only),
            f"--data.source.init_args.root={CORPUS}",
            f"--trainer.default_root_dir={folder}",
            f"--model.context_seconds={context:g}",
        ],
        run=False,
    )
    cli.trainer.callbacks.append(clock)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print(f"demo fit: {time.perf_counter() - start:.0f} s, evaluation passes: {[round(t, 1) for t in clock.seconds]} s")
    return cli.model.eval_history, clock.seconds[-1], folder / "checkpoints" / "last.ckpt", folder


@pytest.mark.slow
def test_demo_halves_the_held_out_cer(demo):
    history = demo[0]
    (first, before), (last, after) = history[0], history[-1]
    assert first == "before training" and last == "step 30"
    cer, wer = (before["val/cer"], after["val/cer"]), (before["val/wer"], after["val/wer"])
    print(f"test CER {cer[0]:.4f} -> {cer[1]:.4f}, WER {wer[0]:.4f} -> {wer[1]:.4f}")
    assert after["val/cer"] <= 0.5 * before["val/cer"]
    # measured 0.535 at seed 0 as shipped since 2026-12-06 (dynamic encoder, a fifth of the steps on the full
    # window, 10 duration buckets, gradients clipped, each clip decoded at its own cut, a fifth of the clips English
    # labelled by the base: data.other_speech; 0.583 before it); a seed moves the CER on 48 clips by up to about
    # 0.07 (docs/demo.md), so more than that above the measured figure is a regression
    assert after["val/cer"] < DEMO_CER + SEED_SPREAD


def held_out_split() -> tuple[list[Path], list[str]]:
    rows = list(csv.DictReader(TEST_TSV.open(encoding="utf-8"), delimiter="\t"))
    return [TEST_TSV.parent / "clips" / r["path"] for r in rows], [r["sentence"] for r in rows]


def cer(hypotheses: list[str], references: list[str]) -> float:
    rates = ErrorRates("zh", prefix="")
    rates.update(hypotheses, references)
    return rates.metrics.compute()["cer"].item()


def tutorial_section_6(adapter_dir: Path, clips: list[Path], generate_kwargs: dict) -> list[str]:
    """The tutorial's inference code, with only what transformers 5 forces changed: ``BitsAndBytesConfig`` for
    ``load_in_8bit=True``, a tokenizer language name (``"Chinese (China)"`` raises), no ``forced_decoder_ids``
    (``generate_kwargs`` from the model card instead), an explicit device instead of ``"auto"``; for a shorter
    encoder context, the two lines the model card adds (the base's context, the processor from the adapter)."""
    language = "chinese"
    task = "transcribe"
    peft_config = PeftConfig.from_pretrained(adapter_dir)
    base_model = AutoModelForSpeechSeq2Seq.from_pretrained(
        peft_config.base_model_name_or_path,
        quantization_config=BitsAndBytesConfig(load_in_8bit=True),
        device_map={"": "cpu"},
    )
    context = RunInfo.read(adapter_dir).context_seconds
    processor_dir = peft_config.base_model_name_or_path
    if context < 30:
        set_context(base_model, context)
        processor_dir = adapter_dir
    peft_model = PeftModel.from_pretrained(base_model, adapter_dir)
    tokenizer = AutoTokenizer.from_pretrained(peft_config.base_model_name_or_path, language=language, task=task)
    processor = AutoProcessor.from_pretrained(processor_dir, language=language, task=task)
    feature_extractor = processor.feature_extractor
    asr = AutomaticSpeechRecognitionPipeline(model=peft_model, tokenizer=tokenizer, feature_extractor=feature_extractor)
    texts = []
    for clip in clips:
        test_audio = {"raw": load_audio(clip), "sampling_rate": 16_000}
        texts.append(asr(test_audio, max_new_tokens=255, generate_kwargs=generate_kwargs)["text"])
    return texts


def evaluated_texts(folder: Path) -> dict[str, str]:
    """The last validation pass's text for each test clip, from its predictions file."""
    path = max(folder.glob("**/predictions/val-step*.jsonl"), key=lambda p: int(p.stem.removeprefix("val-step")))
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return {r["id"]: r["hypothesis"] for r in records}


#: what each path that cannot give the evaluation's text is compared with, and at most how many clips it may change
#: (of 48; the pipeline, the tutorial and whisper.cpp decode 24). Measured on 2026-12-06 (seed 0, as shipped, with
#: other speech): 32 of 48, 0 and 4 of 24, 22 of 48, whisper.cpp 4 and 2 of 24; before other speech 40, 0, 5, 23, 9, 14.
INEXACT = {
    # our own decoding of the merged folder with every clip padded to the 30 s window, as the runtimes below pad it;
    # the evaluation's dynamic encoder cut each clip a second after its speech (model.encoder_length: dynamic):
    # another input, so another text on most clips, at the same CER (0.5856 against 0.5833)
    "transcribe --model at 30 s": ("the evaluation", 44),
    # transformers' generate on the merged folder at 30 s: the same weights and greedy search (no budget or guard,
    # which no clip needed): identical
    "pipeline(merged)": ("transcribe --model at 30 s", 0),
    # the tutorial's inference at 30 s: the int8 base's bitsandbytes kernels under the adapters, not merged weights
    "tutorial section 6 on the adapter": ("transcribe --model at 30 s", 8),
    # faster-whisper at 30 s: CTranslate2's int8 weights and kernels (the merged float32 weights quantized again)
    "faster-whisper on ctranslate2 (int8)": ("transcribe --model at 30 s", 30),
    # whisper.cpp at 30 s (export --ggml): its own kernels, float16 weights or q8_0 blocks, its own greedy search
    "whisper.cpp (f16)": ("transcribe --model at 30 s", 12),
    "whisper.cpp (q8_0)": ("transcribe --model at 30 s", 18),
}


@pytest.mark.slow
def test_what_users_take_home_transcribes_as_the_evaluation_said(demo, tmp_path, request):
    """Every way a user decodes the fine-tuned model, on the held-out test split, clip by clip. Our decoding of every
    take-home form of the weights (``transcribe`` of the merged folder, the adapter folder, the checkpoint) gives the
    evaluation's text on every clip. The runtimes that decode without our code (transformers' pipeline, the
    tutorial's code, faster-whisper, whisper.cpp) pad every clip to Whisper's 30 s window: they are compared with our
    decoding of the merged folder at 30 s, itself compared with the evaluation; each names the clips it changes, and
    their number is bounded (``INEXACT`` says why each cannot be identical). ``transcribe --model`` (both ways) and
    faster-whisper decode all 48 clips, the others (whisper.cpp too, to keep CI short) every other clip.
    faster-whisper and whisper.cpp at Whisper's 30 s context only: export refuses a shorter one."""
    history, evaluation_seconds, checkpoint, folder = demo
    evaluated = history[-1][1]
    assert evaluated["val/looped"] == 0
    full_context = request.config.getoption("--demo-context") == 30
    written = export(checkpoint, tmp_path / "exported", ctranslate2="int8" if full_context else None)
    clips, references = held_out_split()
    texts_of = {"the evaluation": evaluated_texts(folder)}
    assert cer([texts_of["the evaluation"][c.name] for c in clips], references) == pytest.approx(
        evaluated["val/cer"], abs=1e-4
    )
    subset_clips = clips[::2]
    figures = {}

    def decoded(name: str, chosen: list[Path], texts: list[str], seconds: float) -> None:
        """The path's texts, CER and time, and the clips whose text differs from what it is compared with."""
        texts_of[name] = dict(zip([c.name for c in chosen], texts, strict=True))
        against = texts_of[INEXACT.get(name, ("the evaluation",))[0]]
        differ = [c.name for c, text in zip(chosen, texts, strict=True) if text.strip() != against[c.name].strip()]
        hypotheses, refs = texts, [references[clips.index(c)] for c in chosen]
        evaluation = cer([texts_of["the evaluation"][c.name] for c in chosen], refs)
        figures[name] = (cer(hypotheses, refs), evaluation, seconds, differ, len(chosen))

    for mode, source, chosen, whole in (
        ("model", written["merged"], clips, False),
        ("adapter", written["adapter"], subset_clips, False),
        ("checkpoint", checkpoint, subset_clips, False),
        ("model", written["merged"], clips, True),
    ):
        model, processor, info = load_model(**{mode: str(source)})
        decoder = replace(decoder_for(model, processor, info), whole_windows=whole)
        start = time.perf_counter()
        result = transcribe(chosen, decoder, processor.feature_extractor, batch_size=16)
        seconds = time.perf_counter() - start
        assert not result.failed and not any(r["looped"] for r in result.records)
        name = f"transcribe --{mode}" + (" at 30 s" if whole else "")
        decoded(name, chosen, [r["text"] for r in result.records], seconds)

    asr = pipeline("automatic-speech-recognition", model=str(written["merged"]), device="cpu")
    start = time.perf_counter()
    audio = [{"raw": load_audio(c), "sampling_rate": 16_000} for c in subset_clips]
    piped = [o["text"] for o in asr(audio, batch_size=16)]
    decoded("pipeline(merged)", subset_clips, piped, time.perf_counter() - start)

    start = time.perf_counter()
    tutorial = tutorial_section_6(written["adapter"], subset_clips, pipeline_kwargs(RunInfo.read(written["adapter"])))
    decoded("tutorial section 6 on the adapter", subset_clips, tutorial, time.perf_counter() - start)

    fast = []
    if full_context:
        from faster_whisper import WhisperModel  # the deploy extra

        deployed = WhisperModel(str(written["ctranslate2"]), device="cpu", compute_type="int8", cpu_threads=2)
        kwargs = faster_whisper_kwargs(RunInfo.read(written["ctranslate2"]))
        start = time.perf_counter()
        fast = ["".join(s.text for s in deployed.transcribe(load_audio(c), **kwargs)[0]) for c in clips]
        decoded("faster-whisper on ctranslate2 (int8)", clips, fast, time.perf_counter() - start)

    cpp = []
    if full_context:  # whisper.cpp through pywhispercpp (the deploy extra), in a child process per file type
        from tests.test_ggml import whispercpp
        from whisper_lora_pl.takehome.ggml import to_ggml, whispercpp_kwargs

        for kind in ("f16", "q8_0"):
            path = to_ggml(written["merged"], tmp_path / f"ggml-{kind}.bin", kind)
            start = time.perf_counter()  # loading the model included
            texts = whispercpp(path, subset_clips, whispercpp_kwargs(RunInfo.read(written["merged"])))
            decoded(f"whisper.cpp ({kind})", subset_clips, texts, time.perf_counter() - start)
            cpp += texts

    print(f"evaluation: CER {evaluated['val/cer']:.4f}, {evaluation_seconds:.1f} s")
    for name, (value, evaluation, seconds, differ, count) in figures.items():
        against = INEXACT.get(name, ("the evaluation",))[0]
        print(f"{name:36s} CER {value:.4f} (evaluation on its clips {evaluation:.4f})  {seconds:6.1f} s  "
              f"{len(differ)} of {count} clips differ from {against}")  # fmt: skip
        if differ:
            print(f"  {', '.join(differ)}")
    for name, (value, evaluation, _, differ, _) in figures.items():
        assert len(differ) <= INEXACT.get(name, ("", 0))[1], (name, differ)
        # and what the changed clips add up to is small: the paths at 30 s scored up to 0.047 below the evaluation's
        # dynamic cuts on 2026-12-06 (transcribe --model at 30 s 0.493 against 0.535, whisper.cpp f16 0.462 against
        # 0.509 on its 24 clips), within 0.03 of it before the demo trained on other speech
        assert abs(value - evaluation) <= 0.05, name
    # transcribe also runs silero-vad on every file and reads audio in its one process, where the evaluation's 2
    # workers read ahead: a fixed 2-3 s, which the dynamic encoder's short evaluation made visible (6.6 s against
    # 9.7 s on 2026-12-03). The thread count silero-vad used to take is tested on its own (test_segments.py).
    assert figures["transcribe --model"][2] <= 1.5 * evaluation_seconds + 2.0
    for text in piped + tutorial + fast + cpp:  # the paths that run without our decode.py: no runaway output either
        assert len(text) < 40 and compression_ratio(text) < 2.4, text


@pytest.mark.slow
def test_the_readme_quick_start_serves_the_demo_checkpoint_in_a_browser(demo, tmp_path):
    """The README's quick start, both commands: the demo's fit (the fixture runs configs/demo.yaml) and
    ``python -m whisper_lora_pl.app --checkpoint runs/demo/checkpoints/last.ckpt``, driven in Chromium. For held-out
    clips the page shows what ``transcribe --checkpoint`` writes, clip by clip."""
    from playwright.sync_api import sync_playwright

    from tests.test_app import CHROMIUM, serve, submit
    from whisper_lora_pl.takehome.transcribe import main as transcribe_main

    _, _, checkpoint, folder = demo
    clips = held_out_split()[0][:3]
    assert transcribe_main([*map(str, clips), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out")]) == 0
    lines = (tmp_path / "out" / "transcripts.jsonl").read_text(encoding="utf-8").splitlines()
    written = {Path(r["path"]).name: r["text"] for r in map(json.loads, lines)}
    by_clip = evaluated_texts(folder)
    assert all(written[c.name].strip() == by_clip[c.name].strip() for c in clips)  # and the evaluation's
    log = tmp_path / "app.log"
    with serve("--checkpoint", str(checkpoint), log=log, wait_s=300) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        for clip in clips:
            page.goto(url)
            status = submit(page, clip)
            assert "Error" not in status and "segment(s)" in status, status
            assert page.locator("#text textarea").input_value() == written[clip.name], clip.name
        browser.close()


@pytest.mark.slow
def test_long_audio_is_timed_and_transcribed_as_its_clips(demo):
    """The demo's zh-long set (its 48 test clips joined four by four with pauses) at the last validation: decoded in
    pieces of the training clips' length, one cue per sentence, timed to the speech, and the long-form CER close to
    the same sentences' clip CER. Cut only where a piece would pass 30 s, as transcribe did before, the same seed-0
    checkpoint wrote 0.861 long-form CER (0.641 in pieces), 0.940 cue CER and cue starts 0.59 s off at the median,
    each of which fails an assertion below (benchmarks/long_pieces.py, docs/evaluation.md)."""
    after = demo[0][-1][1]
    print({k: round(v, 3) for k, v in after.items() if k.startswith("val/zh-long/")})
    assert after["val/zh-long/files"] == 12 and after["val/zh-long/skipped"] == 0
    assert after["val/zh-long/cer"] < after["val/cer"] + 0.1  # measured 0.641 against 0.583 (seed 0)
    assert after["val/zh-long/cue_cer"] < after["val/cer"] + 0.1
    assert after["val/zh-long/cue_start_median"] <= 0.3 and after["val/zh-long/cue_end_median"] <= 0.3
    assert 0.7 <= after["val/zh-long/cues_per_segment"] <= 1.5 and after["val/zh-long/silence_chars"] == 0


@pytest.mark.slow
def test_the_demo_keeps_the_bases_english(demo):
    """English after fine-tuning on Mandarin, against the base's own figures (the pass before training): long files
    given in English go to the base whole, decoded its way (window after window, timed by itself), and clips left to
    the model are detected by the adapters, English as English and the Mandarin test clips as Chinese (the base
    calls none of those Chinese). Without routing the seed-0 model wrote 0.65 CER and detected no English; decoded
    in the run's pieces the base wrote 0.118 (docs/evaluation.md): each fails an assertion here."""
    before, after = demo[0][0][1], demo[0][-1][1]
    print({k: round(v, 3) for k, v in after.items() if k.startswith(("val/en-long/", "val/en-detect/", "val/zh-d"))})
    assert after["val/en-long/files"] == 4 and after["val/en-long/skipped"] == 0
    assert after["val/en-long/cer"] <= 1.1 * before["val/en-long/cer"]
    assert after["val/en-long/cer"] < 0.08  # measured 0.042, the base's own
    assert after["val/en-detect/language_accuracy"] >= before["val/en-detect/language_accuracy"] == 1.0
    assert after["val/zh-detect/language_accuracy"] == 1.0 > before["val/zh-detect/language_accuracy"]


@pytest.mark.slow
def test_the_merged_model_alone_keeps_english(demo):
    """What a merged folder, a CTranslate2 or a ggml export carries, with no base beside it to route to: the
    checkpoint's merged weights, the language left to them, detect the English clips as English and write them
    well, and the Mandarin test clips as Chinese. Trained without ``data.other_speech`` the same seed's adapters
    detected no English clip (0 of 12) and wrote the English long files at 0.53 CER (docs/evaluation.md)."""
    import numpy as np
    import torch

    from whisper_lora_pl.data.features import log_mel

    model, processor, info = load_model(checkpoint=str(demo[2]))
    decoder = replace(decoder_for(model, processor, info, "auto"), route=None)
    folder = REPO / "data" / "demo-retention"
    rows = [json.loads(line) for line in (folder / "en-clips.jsonl").read_text().splitlines()]
    waves = [load_audio(folder / r["audio"]) for r in rows]
    features = torch.from_numpy(np.stack([log_mel(processor.feature_extractor, w) for w in waves]))
    results = decoder(features, [len(w) / 16_000 for w in waves])
    english = ErrorRates("en", prefix="")
    english.update([r.text for r in results], [r["text"] for r in rows])
    scored = {k: float(v) for k, v in english.metrics.compute().items()}
    print(f"merged, language left to it: {[r.language for r in results]}, {scored}")
    assert [r.language for r in results] == ["en"] * len(rows)
    assert scored["cer"] < 0.2
    clips, _ = held_out_split()
    chinese = [load_audio(c) for c in clips[:16]]
    features = torch.from_numpy(np.stack([log_mel(processor.feature_extractor, w) for w in chinese]))
    assert [r.language for r in decoder(features, [len(w) / 16_000 for w in chinese])] == ["zh"] * 16
