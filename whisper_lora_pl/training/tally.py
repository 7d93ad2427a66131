"""What each pass counts and keeps, apart from the steps that do the work: clips trained on or scored, clips skipped
and why, loops and retries, references longer than their token budget, and the per-utterance records.

A failure must be seen, not averaged away: a CER over fewer clips than the split, a loop, a skipped clip are each
said at the end of the pass, over all ranks (torchmetrics sums; the reasons and records are gathered).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import IO

import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torchmetrics.aggregation import SumMetric

from whisper_lora_pl.training.dist import gather_objects

#: the counts of each kind of pass
COUNTS = {
    "train": ("clips", "skipped_clips"),
    "val": ("clips", "skipped_clips", "looped", "retried"),
    "test": ("clips", "skipped_clips", "looped", "retried"),
}


class PassTally(torch.nn.Module):
    """The counts (metrics, so right under DDP) and the records of the pass under way."""

    def __init__(self) -> None:
        super().__init__()
        # keyed "<stage>_pass": a ModuleDict key "train" would shadow Module.train
        self.counts = torch.nn.ModuleDict(
            {f"{stage}_pass": torch.nn.ModuleDict({n: SumMetric() for n in names}) for stage, names in COUNTS.items()}
        )
        self.reasons: Counter = Counter()  #: why clips were skipped (this rank)
        self.records: list[dict] = []  #: per-utterance results (this rank)
        self.over_budget = 0  #: references longer than their clip's token budget (this rank)
        self.examples: list[tuple[str, str]] = []  #: (reference, hypothesis) pairs to print
        self._partial: IO[str] | None = None

    def of(self, stage: str) -> torch.nn.ModuleDict:
        return self.counts[f"{stage}_pass"]

    def start(self, stage: str) -> None:
        """Every count starts the pass at 0 on every rank: computing a metric never updated warns, and its sync must
        not depend on whether this rank saw a skip."""
        for metric in self.of(stage).values():
            metric.update(0)

    def skip(self, skipped: dict[str, str], stage: str | None) -> None:
        """Count clips (id -> reason) that were skipped; ``stage`` None (predict) keeps the reasons only."""
        if skipped:
            self.reasons.update(skipped.values())
            if stage:
                self.of(stage)["skipped_clips"].update(len(skipped))

    def clear(self) -> None:
        """Forget a pass that says nothing (a partial sanity check)."""
        self.records, self.over_budget, self.reasons, self.examples = [], 0, Counter(), []

    def report(self, stage: str, strategy, device: torch.device, records_name: str | None = None) -> dict[str, float]:
        """The pass's counts over all ranks, each fault said: skips with their reasons, loops, short budgets."""
        values = {f"{stage}/{name}": float(metric.compute().item()) for name, metric in self.of(stage).items()}
        reasons: Counter = sum((Counter(part) for part in gather_objects(self.reasons)), Counter())
        self.reasons = Counter()
        clips, skipped = int(values[f"{stage}/clips"]), int(values[f"{stage}/skipped_clips"])
        if skipped:
            why = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
            verb = "trained on" if stage == "train" else "scored"
            rank_zero_warn(f"{stage}: {verb} {clips} clips; {skipped} skipped ({why}), each named in the log above")
        if stage == "train":
            return values
        if looped := int(values[f"{stage}/looped"]):
            rank_zero_warn(
                f"{stage}: {looped} clips looped (hit their token budget or kept repeating) and "
                f"{int(values[f'{stage}/retried'])} were decoded again by the loop guard; see 'looped' in "
                f"{records_name}.jsonl"
            )
        over = int(strategy.reduce(torch.tensor(self.over_budget, device=device), reduce_op="sum"))
        self.over_budget = 0
        if over:
            rank_zero_warn(
                f"{stage}: {over} reference transcripts are longer than their clip's token budget: raise "
                "model.decoding.tokens_per_second (or min_tokens) so that decoding can write them"
            )
        return values

    def print_examples(self, stage: str) -> None:
        for reference, hypothesis in self.examples:
            rank_zero_info(f"[{stage}] ref: {reference}\n[{stage}] hyp: {hypothesis}")
        self.examples = []

    def open_partial(self, path: Path) -> None:
        """From now on, each batch's records are also written to ``path`` at once: a crash keeps what was done."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = path.open("w", encoding="utf-8")

    def add(self, records: list[dict]) -> None:
        self.records.extend(records)
        if self._partial is not None:
            self._partial.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
            self._partial.flush()

    def write(self, trainer, name: str) -> None:
        """Every rank's records, gathered; rank 0 writes ``<log_dir>/predictions/<name>.jsonl``. A partial file is
        removed then: its records are in the whole one."""
        records = [r for part in gather_objects(self.records) for r in part]
        self.records = []
        log_dir = trainer.log_dir  # a collective (it broadcasts rank 0's folder): every rank must ask
        if trainer.is_global_zero and log_dir:
            path = Path(log_dir) / "predictions" / f"{name}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
            rank_zero_info(f"{len(records)} utterances written to {path}")
        if self._partial is not None:
            self._partial.close()
            Path(self._partial.name).unlink()
            self._partial = None
