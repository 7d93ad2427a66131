"""Make the demo's other speech under ``data/demo-other-speech``: English clips labelled by the base model itself.

    apt-get install espeak-ng && python scripts/make_other_speech.py data/demo-other-speech

``data.other_speech`` mixes such clips into training so that the adapters keep what the base does with speech in
other languages (docs/evaluation.md: Keeping the base's other languages). Two steps, both here:

1. forty English sentences, one per clip, spoken by five espeak-ng voices at several speeds (none of the retention
   sets' sentences, voices at other speeds: the English the evaluation scores is not trained on);
2. their labels: what the base model writes for each, decoded by ``transcribe`` (the one decoding) with
   ``--language en``; the manifest ``en.jsonl`` holds ``audio``, ``text`` (the base's), ``language`` and
   ``spoken`` (espeak-ng's sentence, for reading: the labels are the base's words, not the script's).

With another base, label its own way: ``python -m whisper_lora_pl.transcribe --model <base> --language en --out
DIR AUDIO`` writes ``DIR/transcripts.jsonl`` (``path``, ``text``, ``language``), which ``data.other_speech`` reads
as it is (``audio_column: path``). Run once; the result is committed (0.8 MB of Ogg Vorbis). Seeded.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from whisper_lora_pl.data.audio import SAMPLING_RATE
from whisper_lora_pl.takehome.transcribe import main as transcribe

REPO = Path(__file__).resolve().parent.parent
RATE = SAMPLING_RATE

SENTENCES = [
    "The bakery on the corner sells warm bread every morning.",
    "Please remember to switch off the lights when you leave.",
    "Our neighbours have a dog that barks at the postman.",
    "The museum is free for students on the first Monday.",
    "She plays the piano for an hour before dinner.",
    "The bus to the airport leaves every twenty minutes.",
    "I left my keys on the table next to the window.",
    "The children built a snowman in the park yesterday.",
    "He is learning to cook dishes from many countries.",
    "The new bridge will open to traffic next spring.",
    "Can you tell me how much this jacket costs?",
    "We planted tomatoes and beans in the back garden.",
    "The concert was cancelled because of the storm.",
    "My grandfather tells stories about his time at sea.",
    "The price of fruit went up again this winter.",
    "They walked along the beach until the sun went down.",
    "The doctor said I should drink more water.",
    "A small boat was waiting for us at the harbour.",
    "The office moves to a bigger building in June.",
    "Everyone in the class passed the final exam.",
    "I usually read the news on my phone on the train.",
    "The cat sleeps on the sofa all afternoon.",
    "We need three more chairs for the party tonight.",
    "The road through the mountains is closed in winter.",
    "Her brother repairs old bicycles in his garage.",
    "The hotel room had a view of the old castle.",
    "Do not forget to water the plants while I am away.",
    "The team scored twice in the last ten minutes.",
    "The market is busiest on Saturday mornings.",
    "He writes a letter to his aunt every month.",
    "The lake freezes over during the coldest weeks.",
    "You can pay by card or in cash at the counter.",
    "The teacher asked us to read the first chapter.",
    "A strong wind blew the leaves across the street.",
    "The restaurant serves fresh fish caught that day.",
    "We will meet at the station at a quarter past eight.",
    "The printer on the second floor is out of paper.",
    "My cousin is studying medicine in another city.",
    "The film was longer than we expected.",
    "The farmers hope for rain before the harvest.",
]
VOICES = [("en-us", 170), ("en-gb", 130), ("en-gb-scotland", 140), ("en-029", 165), ("en-gb-x-rp", 135)]


def main() -> None:
    from make_retention_sets import speak, write_jsonl, write_ogg  # the retention sets' espeak-ng and writers

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=REPO / "data" / "demo-other-speech", help="folder")
    parser.add_argument("--model", default="pypi:whisper-base", help="the base that labels them (the demo's)")
    out = parser.parse_args().out
    rng = np.random.default_rng(3400)
    names = []
    for n, sentence in enumerate(SENTENCES):
        voice, speed = VOICES[n % len(VOICES)]
        lead, tail = (np.zeros(int(rng.uniform(0.1, 0.4) * RATE), np.float32) for _ in range(2))
        wave = np.concatenate([lead, speak(sentence, voice, speed + int(rng.integers(-10, 11))), tail])
        names.append(f"en/en-{n:02d}.ogg")
        write_ogg(out / names[-1], wave.astype(np.float32))
    labels = out / "labels"
    transcribe([str(out / name) for name in names] + ["--model", parser.parse_args().model, "--language", "en",
                "--out", str(labels), "--speech", "none"])  # fmt: skip
    records = {Path(r["path"]).name: r for r in map(json.loads, (labels / "transcripts.jsonl").open())}
    rows = []
    for name, sentence in zip(names, SENTENCES, strict=True):
        record = records[Path(name).name]
        rows.append({"audio": name, "text": record["text"], "language": "en", "spoken": sentence})
    write_jsonl(out / "en.jsonl", rows)
    for path in labels.iterdir():
        path.unlink()
    labels.rmdir()
    print(out / "en.jsonl", len(rows), "rows")


if __name__ == "__main__":
    main()
