"""Per-epoch metrics: ``metrics.json`` (the list of records), ``metrics.csv`` and ``training_curve.png``."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog"]


class MetricsLog:
    """Append-only epoch records kept in memory and rewritten atomically after each epoch."""

    def __init__(self, out_dir: Path, records: list[dict[str, Any]] | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.records: list[dict[str, Any]] = list(records or [])

    @classmethod
    def resume(cls, out_dir: Path, up_to_epoch: int) -> MetricsLog:
        path = Path(out_dir) / "metrics.json"
        records = []
        if path.exists():
            records = [r for r in json.loads(path.read_text())["epochs"] if r["epoch"] < up_to_epoch]
        return cls(out_dir, records)

    def append(self, record: dict[str, Any], summary: dict[str, Any] | None = None) -> None:
        self.records.append(record)
        self.write(summary)

    def write(self, summary: dict[str, Any] | None = None) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = {"epochs": self.records, **(summary or {})}
        _atomic(self.out_dir / "metrics.json", json.dumps(payload, indent=2))
        columns: list[str] = []
        for r in self.records:
            columns += [k for k in r if k not in columns]
        tmp = self.out_dir / "metrics.csv.tmp"
        with tmp.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=columns)
            w.writeheader()
            for r in self.records:
                w.writerow(r)
        os.replace(tmp, self.out_dir / "metrics.csv")
        self.plot()

    def plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = self.out_dir / "training_curve.png"
        fig, ax = plt.subplots(figsize=(7, 4))
        epochs = [r["epoch"] for r in self.records]
        for key in ("train_total", "train_seg", "train_logit", "train_sard", "train_ca"):
            ys = [r.get(key, math.nan) for r in self.records]
            if any(not math.isnan(y) for y in ys):
                ax.plot(epochs, ys, label=key.removeprefix("train_"))
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        val = [(r["epoch"], r["val_dice"]) for r in self.records if "val_dice" in r]
        if val:
            ax2 = ax.twinx()
            ax2.plot([e for e, _ in val], [d for _, d in val], "k.-", label="val Dice")
            ax2.set_ylabel("validation Dice")
            ax2.set_ylim(0, 1)
            ax2.legend(loc="upper right")
        ax.legend(loc="upper left")
        fig.tight_layout()
        tmp = path.with_suffix(".tmp.png")
        fig.savefig(tmp, dpi=100)
        plt.close(fig)
        os.replace(tmp, path)
        return path


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
