"""One held-out case as a picture: the image, the reference and each model's prediction, side by side.

Rows are axial slices (first array index): the slice where the reference is largest, and for each
model whose largest predicted component lies outside the reference (a false positive, the usual
reason a case's Dice collapses) the slice through that component's centre.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["slices_to_show", "case_figure"]


def _largest_miss(reference: np.ndarray, predicted: np.ndarray) -> tuple[int, int] | None:
    """(slice, voxels) of the largest predicted component that does not touch the reference, if any."""
    from scipy import ndimage

    components, n = ndimage.label(predicted > 0)
    if n == 0:
        return None
    sizes = ndimage.sum_labels(np.ones_like(components), components, index=np.arange(1, n + 1))
    touching = ndimage.maximum(reference > 0, components, index=np.arange(1, n + 1))
    misses = [(int(size), i + 1) for i, (size, hit) in enumerate(zip(sizes, touching, strict=True)) if not hit]
    if not misses:
        return None
    size, label = max(misses)
    return int(round(ndimage.center_of_mass(components == label)[0])), size


def slices_to_show(reference: np.ndarray, predictions: Mapping[str, np.ndarray]) -> list[tuple[int, str]]:
    """``(slice, why)``: the reference's largest slice, then one per model with a false-positive component."""
    area = (reference > 0).sum(axis=(1, 2))
    shown = [(int(area.argmax()), f"reference largest ({int(area.max())} voxels)")] if area.any() else []
    for name, predicted in predictions.items():
        miss = _largest_miss(reference, predicted)
        if miss is not None and miss[0] not in {k for k, _ in shown}:
            shown.append((miss[0], f"{name}: false positive, {miss[1]} voxels"))
    return shown or [(reference.shape[0] // 2, "middle slice (no reference, no prediction)")]


def case_figure(image: np.ndarray, reference: np.ndarray, predictions: Mapping[str, np.ndarray],
                out: str | os.PathLike, title: str = "", label_names: Mapping[int, str] | None = None) -> Path:
    """Write a PNG grid: rows = :func:`slices_to_show`, columns = image, reference, each prediction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    rows = slices_to_show(reference, predictions)
    columns = [("reference", reference), *predictions.items()]
    n_labels = int(max(reference.max(), *(p.max() for p in predictions.values()), 1))
    colours = plt.get_cmap("tab10")(np.arange(n_labels) % 10)
    cmap = ListedColormap(colours)
    fig, axes = plt.subplots(len(rows), len(columns) + 1, figsize=(2.4 * (len(columns) + 1), 2.5 * len(rows)),
                             squeeze=False)
    lo, hi = np.percentile(image, [1, 99.5])
    for r, (k, why) in enumerate(rows):
        for c, (name, labels) in enumerate([("image", None), *columns]):
            ax = axes[r][c]
            ax.imshow(image[k], cmap="gray", vmin=lo, vmax=hi)
            if labels is not None:
                ax.imshow(np.ma.masked_equal(labels[k], 0), cmap=cmap, vmin=0.5, vmax=n_labels + 0.5, alpha=0.55,
                          interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r][0].set_ylabel(f"slice {k}\n" + textwrap.fill(why, 26), fontsize=7)
    names = label_names or {}
    fig.legend(handles=[Patch(color=colours[i - 1], label=names.get(i, f"label {i}")) for i in range(1, n_labels + 1)],
               loc="lower center", ncol=n_labels, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    out = Path(out)
    tmp = out.with_name(out.stem + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out
