"""``curves.png`` at the end of ``fit``: whether the run learned, at a glance.

Training loss and learning rate per step, validation CER and WER per evaluation (the full pass before training,
where the config asks for one, drawn at step 0), written into the run's log folder beside the TensorBoard events
and ``metrics.csv``. The points travel in checkpoints, so a resumed run draws the whole run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


class TrainingCurves(L.Callback):
    """Collects the points during ``fit`` and draws them when it ends.

    Args:
        filename: name of the picture in the run's log folder.
    """

    def __init__(self, filename: str = "curves.png") -> None:
        self.filename = filename
        self.train: list[tuple[int, float, float]] = []  # (step, loss, learning rate)
        self.evaluations: list[tuple[int, dict[str, float]]] = []  # (step, metrics)

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch, idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs  # {} after a skipped step
        if loss is not None and trainer.is_global_zero:
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.train.append((trainer.global_step, float(loss.detach()), float(lr)))

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        history = getattr(module, "eval_history", [])  # WhisperLoRA appends after each full validation pass
        if history and len(history) > getattr(self, "_seen", 0):
            self._seen = len(history)
            when, values = history[-1]
            self.evaluations.append((0 if when == "before training" else trainer.global_step, dict(values)))

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        log_dir = trainer.log_dir  # a collective under DDP: every rank asks
        if trainer.is_global_zero and log_dir and (self.train or self.evaluations):
            path = draw(self.train, self.evaluations, Path(log_dir) / self.filename)
            module.print(f"training curves: {path}")

    def state_dict(self) -> dict[str, Any]:
        return {"train": self.train, "evaluations": self.evaluations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.train = [tuple(point) for point in state_dict.get("train", [])]
        self.evaluations = [tuple(point) for point in state_dict.get("evaluations", [])]


def draw(train: list[tuple[int, float, float]], evaluations: list[tuple[int, dict[str, float]]], path: Path) -> Path:
    """Three panels: loss, learning rate, error rates; returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    figure, (loss_ax, lr_ax, rate_ax) = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        steps, losses, rates = zip(*train, strict=True)
        loss_ax.plot(steps, losses, color="tab:blue", linewidth=1)
        lr_ax.plot(steps, rates, color="tab:orange")
    loss_ax.set(title="training loss", xlabel="optimizer step")
    lr_ax.set(title="learning rate", xlabel="optimizer step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for name, marker in (("cer", "o"), ("wer", "s")):
        points = [(step, values[f"val/{name}"]) for step, values in evaluations if f"val/{name}" in values]
        if points:
            xs, ys = zip(*points, strict=True)
            rate_ax.plot(xs, ys, marker=marker, label=f"val/{name}")
            rate_ax.annotate(f"{ys[-1]:.3f}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 4))
    rate_ax.set(title="validation error rates (step 0: before training)", xlabel="optimizer step")
    if evaluations:
        rate_ax.legend()
    for ax in (loss_ax, lr_ax, rate_ax):
        ax.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
