"""Subtitle cues: each timed as decoded, its text on lines of 42 columns; cut in time by text only when asked."""

import itertools

from whisper_lora_pl.decoding.cues import MAX_SECONDS, MAX_WIDTH, lines, readable, width
from whisper_lora_pl.takehome.transcribe import srt

CHINESE = "今天天气很好，我们一起去公园散步吧。然后去吃午饭，下午再回家休息一下，晚上看电影。"  # 41 characters
ENGLISH = "Please call Stella and ask her to bring these things with her from the store."
GUIDES = (MAX_SECONDS, MAX_WIDTH)  # --max-cue-seconds 7 --max-cue-width 84: the opt-in cut in time


def test_a_long_chinese_cue_is_cut_after_punctuation_with_its_time_shared_by_its_characters():
    cut = readable([{"start": 0.0, "end": 20.5, "text": CHINESE, "looped": False}], *GUIDES)
    assert [c["text"] for c in cut] == [
        "今天天气很好，",
        "我们一起去公园散步吧。",
        "然后去吃午饭，",
        "下午再回家休息一下，",
        "晚上看电影。",
    ]
    assert cut[0]["start"] == 0.0 and cut[-1]["end"] == 20.5
    assert all(a["end"] == b["start"] for a, b in itertools.pairwise(cut))  # no gap, no overlap
    for c in cut:  # 20.5 s over 41 characters: 0.5 s each
        assert abs(c["end"] - c["start"] - 0.5 * len(c["text"])) < 0.002, c
        assert c["end"] - c["start"] <= 7.0 and width(c["text"]) <= 84 and c["looped"] is False


def test_latin_text_is_cut_at_a_space_never_inside_a_word():
    cut = readable([{"start": 10.0, "end": 18.0, "text": ENGLISH}], *GUIDES)
    assert [c["text"] for c in cut] == [
        "Please call Stella and ask her to bring",
        "these things with her from the store.",
    ]
    assert cut[0]["end"] == cut[1]["start"] == round(10.0 + 8.0 * 39 / 76, 3)


def test_a_wide_but_short_cue_is_cut_and_a_readable_one_is_left_alone():
    wide = "一二三四五六七八九十" * 4  # 40 characters in 3 s: wider than two lines of 16
    assert [c["text"] for c in readable([{"start": 0.0, "end": 3.0, "text": wide}], *GUIDES)] == [wide[:20], wide[20:]]
    fine = {"start": 0.0, "end": 6.9, "text": CHINESE[:32]}
    assert readable([fine], *GUIDES) == [fine]
    assert readable([{"start": 0.0, "end": 60.0, "text": CHINESE}])[0]["text"] == CHINESE  # the default: no cut
    word = {"start": 0.0, "end": 9.0, "text": "Supercalifragilisticexpialidocious"}  # nowhere to cut: kept whole
    assert readable([word], *GUIDES) == [word]


def test_the_srt_times_each_cue_as_decoded_and_puts_its_text_on_lines():
    chunks = [{"start": 1.0, "end": 21.5, "text": CHINESE}, {"start": 22.0, "end": 23.0, "text": ""}]
    text = srt(chunks)  # one piece's text: one cue, the piece's time, never shared out by characters
    assert text == "1\n00:00:01,000 --> 00:00:21,500\n" + lines(CHINESE) + "\n\n"
    shown = lines(CHINESE).split("\n")
    assert "".join(shown) == CHINESE and len(shown) == 4 and all(width(line) <= 42 for line in shown)
    assert shown == [
        "今天天气很好，",
        "我们一起去公园散步吧。",
        "然后去吃午饭，",
        "下午再回家休息一下，晚上看电影。",
    ]  # at punctuation
    assert lines(ENGLISH) == "Please call Stella and ask her to bring\nthese things with her from the store."
    assert lines("短句") == "短句" and lines("x" * 50) == "x" * 50  # a word longer than a line keeps it
    # asked for the guides' limits, the old cut: five cues timed by their share of the text
    guided = srt(chunks, *GUIDES)
    assert guided.count(" --> ") == 5 and guided.startswith("1\n00:00:01,000 --> 00:00:04,500\n今天天气很好，\n\n")
