"""Training curve of a model from its card: validation and training loss per epoch, learning rate.

Reads ``training.history`` of MODEL_DIR/card.json (written by ``napari-uad train``) and writes a PNG. The x axis
is the optimizer step where the history records it, else the epoch (``--steps-per-epoch`` may differ between a
run and its ``--resume``: pass ``--epoch-steps 167:400,100`` to say epochs 1-167 had 400 steps, later ones 100).
Usage: python benchmarks/plot_training.py MODEL_DIR OUT.png [--epoch-steps FIRST_EPOCHS:STEPS,STEPS]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def optimizer_steps(history: list[dict], epoch_steps: str | None) -> tuple[np.ndarray, str]:
    """Optimizer step after each epoch (recorded, or from ``epoch_steps``), else the epoch number."""
    epochs = np.array([h["epoch"] for h in history])
    if all("step" in h for h in history):
        return np.array([h["step"] for h in history]), "optimizer steps"
    if epoch_steps:
        head, tail = epoch_steps.split(",")
        n_first, first = (int(v) for v in head.split(":"))
        per_epoch = np.where(epochs <= n_first, first, int(tail))
        return np.cumsum(per_epoch), "optimizer steps"
    return epochs, "epoch"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--epoch-steps", default=None, metavar="FIRST_EPOCHS:STEPS,STEPS")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = json.loads((args.model_dir / "card.json").read_text(encoding="utf-8"))
    training = card["training"]
    history = training["history"]
    x, x_label = optimizer_steps(history, args.epoch_steps)
    val = np.array([h["val_loss"] for h in history])
    train = np.array([h["train_total"] for h in history])
    lr = np.array([h.get("learning_rate", training["config"]["learning_rate"]) for h in history])

    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(3, 1))
    ax.plot(x, train, lw=1, label="training loss (augmented, with context-encoding term)")
    ax.plot(x, val, lw=1, label="validation loss (held-out volumes)")
    best = int(np.argmin(val))
    ax.plot(x[best], val[best], "k*", label=f"best: {val[best]:.0f} at epoch {history[best]['epoch']}")
    low, high = np.percentile(np.concatenate([val, train]), [0, 90])
    ax.set_ylim(low - 0.05 * (high - low), high)
    ax.set_ylabel("loss (nats per slice)")
    ax.set_title(f"{card['name']} {card['version']}: {training.get('stop_reason') or ''}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_lr.semilogy(x, lr, drawstyle="steps-post")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel(x_label)
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
