"""Make ``tests/assets/en_eight.ogg``: eight different English sentences spoken by espeak-ng, with pauses, 34 s long
(two of Whisper's windows), for the test that the take-home paths time long audio alike.

    apt-get install espeak-ng && python scripts/make_long_english.py tests/assets/en_eight.ogg

Run once; the result is committed (130 kB), so the tests do not need espeak-ng. Different sentences, because one
sentence said again and again trips the loop guard (its compression ratio), and a window decoded again at a
temperature samples differently in every runtime.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from whisper_lora_pl.data.audio import SAMPLING_RATE, load_audio

SENTENCES = [
    "The weather was cold, so we stayed inside all morning.",
    "My brother bought a new bicycle last Tuesday.",
    "Please close the window before you leave the house.",
    "The train to the city leaves at seven o'clock.",
    "She planted tomatoes and beans in the garden.",
    "We will meet again next week to finish the report.",
    "Our neighbours have a small dog that barks at night.",
    "He read the letter twice and then put it away.",
]
#: seconds of silence after each sentence (the seventh ends 0.18 s before the first window does)
PAUSES = [1.6, 1.2, 2.0, 0.9, 1.8, 1.4, 1.1, 0.0]


def main() -> None:
    out = Path(sys.argv[1])
    pieces, t = [np.zeros(SAMPLING_RATE // 2, np.float32)], 0.5
    for text, pause in zip(SENTENCES, PAUSES, strict=True):
        wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "--stdout", text], capture_output=True)
        wave = load_audio(wav.stdout)
        spoken = np.flatnonzero(np.abs(wave) > 0.01)
        wave = wave[spoken[0] : spoken[-1] + 1]
        print(f"{t:.2f}-{t + len(wave) / SAMPLING_RATE:.2f} {text}")
        pieces += [wave, np.zeros(int(pause * SAMPLING_RATE), np.float32)]
        t += len(wave) / SAMPLING_RATE + pause
    pieces.append(np.zeros(SAMPLING_RATE // 2, np.float32))
    sf.write(out, 0.8 * np.concatenate(pieces), SAMPLING_RATE, format="OGG", subtype="VORBIS")


if __name__ == "__main__":
    main()
