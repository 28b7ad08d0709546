"""One phantom case as a picture: each channel on chosen slices, then the reference labels over the first.

``python -m distillation.evaluate.phantom_figure brain hard 3 docs/benchmark-brain-hard.png`` draws
case seed 3 of the hard brain setting at 2 mm (the figure in docs/benchmark.md).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

__all__ = ["phantom_figure"]


def phantom_figure(case, out: str | os.PathLike, slices: list[int] | None = None, title: str = "") -> Path:
    """Write a PNG: rows = axial slices (default: the largest tumour slice and two through the deep nuclei)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    labels = case.labels
    if slices is None:
        tumour = np.isin(labels, (1, 2, 3)).sum(axis=(1, 2))
        middle = labels.shape[0] // 2
        slices = sorted({int(tumour.argmax()) if tumour.any() else middle - 12, middle, middle + 6})
    n_labels = int(max(case.label_names)) if case.label_names else int(labels.max())
    colours = np.concatenate([plt.get_cmap("tab20")(np.arange(20)), plt.get_cmap("tab20b")(np.arange(20))])
    cmap = ListedColormap(colours[:n_labels])
    channels = list(case.images)
    fig, axes = plt.subplots(len(slices), len(channels) + 1, figsize=(2.3 * (len(channels) + 1), 2.5 * len(slices)),
                             squeeze=False)
    for r, k in enumerate(slices):
        for c, name in enumerate(channels):
            img = case.images[name][k]
            if case.modality == "CT":
                lo, hi = -160.0, 240.0                      # soft-tissue window (L 40, W 400)
            else:
                lo, hi = np.percentile(case.images[name][case.images[name] != 0], (1, 99.5)) \
                    if np.any(case.images[name]) else (0, 1)
            axes[r, c].imshow(img, cmap="gray", vmin=lo, vmax=hi)
            axes[r, c].set_title(f"{name}, slice {k}" if r == 0 else f"slice {k}", fontsize=8)
        base = case.images[channels[0]][k]
        axes[r, -1].imshow(base, cmap="gray")
        lab = np.ma.masked_equal(labels[k], 0)
        axes[r, -1].imshow(lab, cmap=cmap, vmin=1, vmax=max(n_labels, 1), alpha=0.6, interpolation="nearest")
        axes[r, -1].set_title("reference labels", fontsize=8)
    for ax in axes.ravel():
        ax.set_axis_off()
    shown = sorted(int(v) for v in np.unique(labels[slices]) if v)
    handles = [Patch(color=colours[v - 1], label=case.label_names.get(v, str(v))) for v in shown]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    path = Path(out)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    from distillation.phantoms.settings import generate_case

    kind, setting, seed, out = argv
    case = generate_case(kind, int(seed), setting=setting)
    lesions = len(case.meta.get("lesions", [])) if setting == "hard" else None
    title = f"{kind} phantom, setting {setting}, seed {seed}, {case.spacing[0]:g} mm" + \
        (f", {lesions} lesion(s)" if lesions is not None else "")
    phantom_figure(case, out, title=title)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
