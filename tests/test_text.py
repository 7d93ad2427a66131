import pytest

from whisper_lora_pl.text import ErrorRates, TextNormalizer, normalize_chinese


def scores(language, hypotheses, references):
    rates = ErrorRates(language, prefix="val/")
    rates.update(hypotheses, references)
    return {k: round(v.item(), 4) for k, v in rates.metrics.compute().items()}


def test_chinese_normalisation():
    normalize = TextNormalizer("zh")
    assert normalize("這是一個測試！") == "这是一个测试"  # traditional -> simplified, punctuation gone
    assert normalize("ＡＢＣ　１２３，好。") == "abc123好"  # full-width -> half-width, spaces gone
    assert normalize_chinese("你 好 ， 世界 ?") == "你好世界"


def test_traditional_and_simplified_count_as_equal():
    assert scores("zh", ["這是一個測試。"], ["这是一个测试"]) == {"val/wer": 0.0, "val/cer": 0.0}


def test_chinese_cer_counts_characters_and_wer_counts_sentences():
    # one substituted character out of six; the unsegmented sentence is one "word", so WER is 1
    assert scores("zh", ["这是一个侧试"], ["这是一个测试"]) == {"val/wer": 1.0, "val/cer": round(1 / 6, 4)}


def test_rates_sum_edits_over_batches_not_average_sentences():
    rates = ErrorRates("zh", prefix="test/")
    rates.update(["你好吗"], ["你好"])  # one insertion over 2 reference characters
    rates.update(["今天天气很好"], ["今天天气很好"])  # 6 correct characters
    assert rates.metrics.compute()["test/cer"].item() == pytest.approx(1 / 8)


def test_english_uses_whispers_english_normaliser():
    assert TextNormalizer("en")("Mr. Smith isn't HERE!") == "mister smith is not here"
    # three of six reference words deleted
    assert scores("en", ["The cat sat."], ["the cat sat on the mat"])["val/wer"] == 0.5


def test_other_languages_use_the_basic_normaliser():
    assert TextNormalizer("de")("Hallo, Welt!") == "hallo welt"
    assert scores("de", ["hallo welt"], ["Hallo, Welt!"]) == {"val/wer": 0.0, "val/cer": 0.0}
