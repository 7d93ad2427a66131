"""The code paths only a GPU takes, each run once through the real commands, with a verdict per path.

    python benchmarks/gpu_paths.py [--out runs/gpu-paths] [--model FOLDER] [--accelerator gpu]

On the shipped demo corpus (``data/demo-zh-CN``, a share of it) and a tiny random Whisper (or ``--model``), each step
a ``train.py`` / ``export`` process as a user runs it:

1. ``fit`` at the recipe's precision, ``16-mixed`` with an int8 base, DataLoader workers with ``pin_memory`` (on when
   the device is CUDA), the memory check running the worst batches on the GPU, checkpoints with CUDA's RNG state;
2. exact resume: 3 steps, then ``--ckpt_path last`` to 6, against 6 unbroken steps: the same losses;
3. ``validate`` under ``strategy: ddp`` on every GPU (NCCL's gathering; with one GPU a process group of one): the
   same CER and the same text per clip as one process;
4. ``export --device`` on the GPU, then ``transcribe --model`` of the merged folder on the GPU: the evaluation's
   text per clip (the merged copy evaluation decodes with is float16 on a GPU, the export float32: a clip whose
   text differs is listed);
5. nf4's compute type on this GPU (bfloat16 where it has it, else float16).

Prints one line per path: ``PASS`` or ``FAIL`` and what was compared. ``--accelerator cpu`` runs the same steps on the
CPU (32-true, gloo) to check the script itself.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


def train_py(*args: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, str(REPO / "train.py"), *args], check=True, env=env, cwd=REPO)


def losses(folder: Path) -> dict[int, float]:
    (path,) = folder.glob("**/metrics.csv")
    with path.open() as handle:
        return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(handle) if r.get("train/loss")}


def texts(folder: Path, pattern: str) -> dict[str, str]:
    (path,) = folder.glob(f"**/predictions/{pattern}")
    return {r["id"]: r["hypothesis"] for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def verdict(name: str, ok: bool, detail: str) -> bool:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "gpu-paths")
    parser.add_argument("--model", help="a Whisper folder (default: a tiny random one made here)")
    parser.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu")
    a = parser.parse_args()
    gpu = a.accelerator == "gpu"
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.model is None:
        from whisper_lora_pl.convert import tiny_whisper

        a.model = str(tiny_whisper(out / "tiny-whisper"))
    print("device:", torch.cuda.get_device_name() if gpu else "cpu", "| torch", torch.__version__, flush=True)
    checkpoints = out / "checkpointing.yaml"
    checkpoints.write_text(
        "trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks.ModelCheckpoint\n"
        f"      init_args: {{dirpath: {out / 'checkpoints'}, save_last: true, every_n_train_steps: 1}}\n"
    )
    common = [
        "--config", str(REPO / "configs" / "tiny-cpu.yaml"),
        f"--model.model_name={a.model}",
        f"--trainer.accelerator={a.accelerator}",
        f"--trainer.precision={'16-mixed' if gpu else '32-true'}",
        "--trainer.logger=CSVLogger",
        "--model.encoder_length=dynamic", "--model.encoder_full_share=0.2",
        f"--data.source.init_args.root={REPO / 'data' / 'demo-zh-CN'}",
        "--data.train_split=train", "--data.val_split=test", "--data.test_split=test",
        "--data.max_train_samples=32", "--data.max_eval_samples=16", "--data.num_buckets=4",
        "--data.num_workers=2", "--data.eval_batch_size=4", "--trainer.limit_val_batches=1.0",
        "--memory_check.on_cpu=true",
    ]  # fmt: skip
    ok = []

    def fit(name: str, steps: int, *extra: str) -> Path:
        folder = out / name
        train_py("fit", *common, f"--trainer.default_root_dir={folder}", f"--trainer.logger.save_dir={folder}",
                 f"--trainer.max_steps={steps}", *extra)  # fmt: skip
        return folder

    straight = fit("straight", 6)
    ok.append(verdict("fit 16-mixed + int8 + pinned workers + memory check", len(losses(straight)) == 6, "6 steps"))
    fit("first", 3, "--config", str(checkpoints))
    resumed = fit("resumed", 6, "--config", str(checkpoints), "--ckpt_path=last")
    whole, second = losses(straight), losses(resumed)
    same = all(abs(whole[s] - second[s]) < 1e-6 for s in second) and sorted(second) == [3, 4, 5]
    ok.append(verdict("exact resume (CUDA RNG state)", same, f"steps 3-5: {second} against {whole}"))

    checkpoint = out / "checkpoints" / "last.ckpt"
    one, many = out / "validate-one", out / "validate-ddp"
    for folder, extra in ((one, []), (many, ["--trainer.strategy=ddp", f"--trainer.devices={-1 if gpu else 2}"])):
        train_py("validate", *common, f"--trainer.default_root_dir={folder}", f"--trainer.logger.save_dir={folder}",
                 f"--ckpt_path={checkpoint}", *extra)  # fmt: skip
    evaluated = texts(one, "val-step6.jsonl")
    ok.append(
        verdict(
            "DDP evaluation (NCCL gathering)", texts(many, "val-step6.jsonl") == evaluated, f"{len(evaluated)} clips"
        )
    )

    exported = out / "exported"
    device = "cuda" if gpu else "cpu"
    subprocess.run([sys.executable, "-m", "whisper_lora_pl.export", str(checkpoint), str(exported), "--device", device],
                   check=True, cwd=REPO)  # fmt: skip
    clips = REPO / "data" / "demo-zh-CN" / "zh-CN" / "clips"
    files = [str(clips / clip) for clip in evaluated]  # a Common Voice clip's id is its file's name
    transcripts = out / "transcripts"
    merged = str(exported / "merged")
    transcribe = ["-m", "whisper_lora_pl.transcribe", *files, "--model", merged, "--out", str(transcripts)]
    subprocess.run([sys.executable, *transcribe, "--device", device, "--speech", "none"], check=False, cwd=REPO)
    records = [json.loads(line) for line in (transcripts / "transcripts.jsonl").read_text().splitlines()]
    decoded = {Path(r["path"]).name: r.get("text") for r in records}
    differ = sorted(clip for clip in evaluated if (decoded.get(clip) or "").strip() != evaluated[clip].strip())
    ok.append(verdict("export --device + transcribe on the device", not differ, f"clips whose text differs: {differ}"))

    from whisper_lora_pl.model.build import nf4_compute_dtype

    dtype = nf4_compute_dtype(device)
    expected = (torch.bfloat16 if torch.cuda.is_bf16_supported(False) else torch.float16) if gpu else torch.float32
    ok.append(verdict("nf4 compute type", dtype == expected, str(dtype)))
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
