"""What the study measures of one trained model, always through what the node deploys.

* :func:`network_cost`: parameters and GFLOPs of one window (patch size from the card), counted on
  the torch network rebuilt from the checkpoint (deep supervision off, KD heads excluded).
* :func:`latency`: CPU latency through :mod:`pacsnode.inference` (ONNX Runtime, ``threads`` intra-op
  threads, the node's own sliding window): the median of ``windows`` single-window calls of
  ``Model.predict`` after one warm-up, and the median whole-case time (align, preprocess, network,
  resample back, postprocess) over the first ``cases`` held-out cases. The load average at the time
  is recorded beside it: on a shared machine it says how much to trust the figure.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["network_cost", "latency"]


def network_cost(checkpoint: str | Path) -> dict[str, Any]:
    """``{"parameters", "gflops_per_window", "patch_size"}`` of a distillation checkpoint's network."""
    from distillation.checkpoint import load_checkpoint
    from distillation.networks import count_gflops, count_parameters

    ck = load_checkpoint(checkpoint)
    net = ck.build_network(deep_supervision=False)
    patch = [int(p) for p in ck.card.get("patch_size") or ck.extra["plan"]["patch_size"]]
    return {"parameters": count_parameters(net), "gflops_per_window": count_gflops(net, patch, ck.input_channels),
            "patch_size": patch}


def latency(model_path: str | Path, dataset: str | Path, *, threads: int, cases: int, windows: int,
            split: str = "Ts") -> dict[str, Any]:
    """Seconds per window and per case of ``model_path`` run by the node's inference on ``dataset``."""
    from distillation.evaluate import iter_cases
    from pacsnode.inference import Model, run

    model = Model.load(model_path, threads=threads)
    card = model.card.to_dict()
    window = np.random.default_rng(0).standard_normal(
        (1, len(card["inputs"]), *card["patch_size"]), dtype=np.float32)
    model.predict(window)  # warm-up: ORT plans its kernels on the first call
    per_window = []
    for _ in range(windows):
        t0 = time.perf_counter()
        model.predict(window)
        per_window.append(time.perf_counter() - t0)
    modalities = tuple(c["modality"] for c in card["inputs"])
    per_case, network, n_windows = [], [], []
    for case in list(iter_cases(dataset, split))[:cases]:
        volumes = case.load_volumes(modalities)
        t0 = time.perf_counter()
        pred = run(model, volumes)
        per_case.append(time.perf_counter() - t0)
        network.append(pred.timings.get("network", float("nan")))
        n_windows.append(pred.windows)
    return {
        "threads": threads,
        "runtime": "onnxruntime via pacsnode.inference",
        "window_seconds": statistics.median(per_window),
        "window_seconds_all": per_window,
        "case_seconds": statistics.median(per_case) if per_case else None,
        "case_network_seconds": statistics.median(network) if network else None,
        "case_seconds_all": per_case,
        "windows_per_case": statistics.median(n_windows) if n_windows else None,
        "load_average_1min": os.getloadavg()[0],
    }
