import pytest

from whisper_lora_pl.decoding.text import ErrorRates, TextNormalizer, normalize_chinese


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


def test_chinese_cer_counts_characters_and_wer_counts_jieba_words():
    # one substituted character out of six; jieba: 这是/一个/测试 against 这是/一个/侧试, one word of three
    assert scores("zh", ["这是一个侧试"], ["这是一个测试"]) == {"val/wer": round(1 / 3, 4), "val/cer": round(1 / 6, 4)}
    # 我们/去/公园/散步: one word of four, one character of seven
    assert scores("zh", ["我们去公园跑步"], ["我们去公园散步"]) == {"val/wer": 0.25, "val/cer": round(1 / 7, 4)}
    rates = ErrorRates("zh", prefix="")
    assert rates.utterance("我们去公园跑步", "我们去公园散步") == {"wer": 0.25, "cer": 1 / 7}


def test_chinese_numerals_compare_equal_whatever_the_script():
    normalize = TextNormalizer("zh")
    assert normalize("十万") == normalize("10万") == normalize("10萬") == "100000"  # whisper-base writes 10萬
    assert normalize("二〇二六年") == normalize("2026年") == normalize("二零二六年") == "2026年"
    assert (
        normalize("一百二十三个") == "123个" and normalize("三点五元") == "3.5元" and normalize("1.5万人") == "150000人"
    )
    assert scores("zh", ["他有10萬元"], ["他有十万元"]) == {"val/wer": 0.0, "val/cer": 0.0}
    # 他有100000元 against 他有100000块: one character of nine
    assert scores("zh", ["他有十万块"], ["他有十万元"])["val/cer"] == round(1 / 9, 4)


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
