"""The demo's whole picture: in-domain clips, Mandarin and English long files, language identification, per setting
and seed, with the medians in one Markdown table (the figures behind the demo's defaults, docs/evaluation.md).

    python benchmarks/retention.py --seeds 0 1 2 --settings shipped ts25 ts50

Each run is ``configs/demo.yaml`` (with its ``data.eval_sets``) in a child process, without checkpoints or the pass
before training; its last validation line is read back. ``--base`` adds the base model itself (a fit of no steps:
the pass before training), twice: with the run's decoding (the dynamic encoder: what the "before training" line
shows) and with the padded 30 s encoder (the base as transformers and faster-whisper users run it, the figure a
retention target is taken against).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

OTHER = '--data.other_speech={{"manifest": "data/demo-other-speech/en.jsonl", "share": {}}}'
#: the demo before other speech: no other speech, other languages routed to the base, which detects them
ROUTE = ["--data.other_speech=null", "--model.decoding.detect_with=base"]
SETTINGS = {
    "shipped": [],  # configs/demo.yaml as it is
    "route": ROUTE,  # the demo's default before other speech (2026-12-06)
    "adapters": [*ROUTE, "--model.decoding.other_languages=adapters"],  # every language by the adapters
    "ts25": [*ROUTE, "--data.timestamp_share=0.25"],
    "ts50": [*ROUTE, "--data.timestamp_share=0.5"],
    "ts25-pauses": [*ROUTE, "--data.timestamp_share=0.25", "--model.decoding.timestamps=pauses"],
    "ts50-pauses": [*ROUTE, "--data.timestamp_share=0.5", "--model.decoding.timestamps=pauses"],
    "packed": [*ROUTE, "--data.pack_windows=true", "--data.timestamp_share=1.0"],
    # data.other_speech: English clips labelled by the base, a share of the training clips; routing off, so that the
    # figures are what the adapters themselves keep (what a merged folder, CTranslate2 or ggml export carries)
    "keep20": [OTHER.format(0.2), "--model.decoding.other_languages=adapters"],
    "keep33": [OTHER.format(0.33), "--model.decoding.other_languages=adapters"],
    # the control of keep20: as many clips (200) without other speech (the 160 Mandarin clips, then 40 of them again)
    "steps25": [
        *ROUTE,
        "--trainer.max_steps=25",
        "--trainer.max_epochs=2",
        "--model.decoding.other_languages=adapters",
    ],
    # with routing, the language of clips left to the model detected by the adapters, which trained on both
    "keep20-route": [
        OTHER.format(0.2),
        "--model.decoding.other_languages=base",
        "--model.decoding.detect_with=adapters",
    ],
    "keep20-ts50": [
        OTHER.format(0.2),
        "--data.timestamp_share=0.5",
        "--model.decoding.timestamps=pauses",
        "--model.decoding.other_languages=base",
        "--model.decoding.detect_with=adapters",
    ],
    "keep20-ts50-adapters": [
        OTHER.format(0.2),
        "--data.timestamp_share=0.5",
        "--model.decoding.timestamps=pauses",
        "--model.decoding.other_languages=adapters",
    ],
}
COLUMNS = [
    ("clip CER", "val/cer"),
    ("zh-long CER", "val/zh-long/cer"),
    ("zh-long cue CER", "val/zh-long/cue_cer"),
    ("zh-long start/end median s", ("val/zh-long/cue_start_median", "val/zh-long/cue_end_median")),
    ("zh-long cues/sentence", "val/zh-long/cues_per_segment"),
    ("en-long CER", "val/en-long/cer"),
    ("en-long WER", "val/en-long/wer"),
    ("en-long start/end median s", ("val/en-long/cue_start_median", "val/en-long/cue_end_median")),
    ("en language ID", "val/en-detect/language_accuracy"),
    ("zh language ID", "val/zh-detect/language_accuracy"),
]


def run(folder: Path, subcommand: str, extra: list[str]) -> tuple[dict[str, float], float]:
    """The metrics of the last validation line of ``train.py SUBCOMMAND``, and its wall time in seconds."""
    args = [
        sys.executable,
        str(REPO / "train.py"),
        subcommand,
        "--config",
        str(REPO / "configs" / "demo.yaml"),
        f"--trainer.default_root_dir={folder}",
        "--trainer.enable_progress_bar=false",
        *extra,
    ]
    began = time.perf_counter()
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
    took = time.perf_counter() - began
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() + done.stderr.splitlines() if "val/cer " in line]
    values = dict(re.findall(r"(val/\S+) (\S+)", lines[-1]))
    return {k: float(v) for k, v in values.items()}, took


def cell(values: list[dict[str, float]], key) -> str:
    if isinstance(key, tuple):
        return " / ".join(cell(values, k) for k in key)
    found = [v[key] for v in values if key in v]
    if not found:
        return "-"
    median = statistics.median(found)
    return f"{median:.3f}" + (f" ({min(found):.3f}-{max(found):.3f})" if len(found) > 1 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--settings", nargs="+", default=["shipped", "ts25", "ts50"], choices=list(SETTINGS))
    parser.add_argument("--base", action="store_true", help="also the base model, both ways")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "retention")
    args = parser.parse_args()
    rows: list[tuple[str, list[dict[str, float]], list[float]]] = []
    if args.base:
        for name, extra in (("base, the run's decoding", []), ("base, padded 30 s", ["--model.encoder_length=padded"])):
            # a fit of no steps: the pass before training, with the training split's pieces of long audio
            extra = [*extra, "--trainer.max_steps=0", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]"]
            values, took = run(args.out / "base", "fit", extra)
            rows.append((name, [values], [took]))
            print(f"{name}: {values}", flush=True)
    for setting in args.settings:
        results, times = [], []
        for seed in args.seeds:
            extra = [
                f"--seed_everything={seed}",
                "--trainer.num_sanity_val_steps=0",
                "--trainer.enable_checkpointing=false",
                "--trainer.callbacks=[]",
                *SETTINGS[setting],
            ]
            values, took = run(args.out / f"{setting}-{seed}", "fit", extra)
            results.append(values)
            times.append(took)
            print(f"{setting} seed {seed} ({took:.0f} s): {values}", flush=True)
        rows.append((setting, results, times))
    print("\n| setting | " + " | ".join(name for name, _ in COLUMNS) + " | run s |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for name, results, times in rows:
        cells = [cell(results, key) for _, key in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + f" | {statistics.median(times):.0f} |")


if __name__ == "__main__":
    main()
