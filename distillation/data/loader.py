"""Batches of augmented patches as an ``IterableDataset`` driven by a torch ``DataLoader``.

Each iterator (one per epoch) yields ``batches_per_epoch`` batches split over the workers.
Randomness is seeded from (seed, rank, epoch, worker), so DDP ranks draw different patches
(what a ``DistributedSampler`` gives a map-style dataset) and a resumed run is reproducible.

Cases without a label (``labelled = False``, label-free distillation) give a label patch of
:data:`~distillation.losses.objective.UNLABELLED` everywhere. When labelled and unlabelled cases
are mixed, every batch of ``B >= 2`` takes its last ``B // 2`` samples from the labelled cases
(the positions nnU-Net's foreground oversampling forces, so the labelled ones keep it) and the
others from the unlabelled; with ``B = 1`` the batches alternate, unlabelled first.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from distillation.data.augment import AugmentConfig, build_augmentation
from distillation.data.preprocess import PreprocessedCase
from distillation.data.sampler import forced_foreground, sample_patch
from distillation.losses.objective import UNLABELLED

__all__ = ["PatchBatches", "make_loader", "validation_patches"]


class PatchBatches(IterableDataset):
    """Yields ``(image (B, C, *patch) float32, label (B, 1, *patch) int64)``."""

    def __init__(self, cases: Sequence[PreprocessedCase], patch_size: Sequence[int], batch_size: int,
                 batches_per_epoch: int, augment: AugmentConfig | None = None,
                 oversample_foreground: float = 0.33, seed: int = 0, rank: int = 0) -> None:
        if not cases:
            raise ValueError("training needs at least one case, got none")
        self.cases = list(cases)
        labelled = [c for c in self.cases if c.labelled]
        unlabelled = [c for c in self.cases if not c.labelled]
        self._pools = (unlabelled, labelled) if labelled and unlabelled else (self.cases, self.cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.batch_size = int(batch_size)
        self.batches_per_epoch = int(batches_per_epoch)
        self.augment = augment or AugmentConfig(enabled=False)
        self.oversample = float(oversample_foreground)
        self.seed, self.rank, self.epoch = int(seed), int(rank), 0
        # built (and MONAI imported) once here, so forked workers inherit it instead of
        # re-importing MONAI every epoch
        self._transform = build_augmentation(self.augment)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _pool(self, batch: int, index: int) -> list[PreprocessedCase]:
        """The cases sample ``index`` of batch number ``batch`` is drawn from (see the module doc)."""
        b = self.batch_size
        takes_labelled = index >= b - b // 2 if b >= 2 else batch % 2 == 1
        return self._pools[int(takes_labelled)]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        n = len(range(wid, self.batches_per_epoch, nw))
        seed_seq = np.random.SeedSequence([self.seed, self.rank, self.epoch, wid])
        rng = np.random.default_rng(seed_seq)
        transform = copy.deepcopy(self._transform)
        transform.set_random_state(seed=int(seed_seq.generate_state(1)[0]))
        for i in range(n):
            imgs, segs = [], []
            for b in range(self.batch_size):
                pool = self._pool(wid + i * nw, b)
                case = pool[int(rng.integers(len(pool)))]
                img, seg = sample_patch(case, self.patch_size,
                                        forced_foreground(b, self.batch_size, self.oversample), rng)
                out = transform({"image": torch.from_numpy(img),
                                 "label": torch.from_numpy(seg[None].astype(np.float32))})
                imgs.append(torch.as_tensor(np.asarray(out["image"]), dtype=torch.float32))
                seg_t = torch.as_tensor(np.asarray(out["label"])).round().long()
                segs.append(seg_t if case.labelled else torch.full_like(seg_t, UNLABELLED))
            yield torch.stack(imgs), torch.stack(segs)


def make_loader(dataset: PatchBatches, num_workers: int = 0) -> DataLoader:
    """A ``DataLoader`` over pre-batched samples (``batch_size=None``)."""
    return DataLoader(dataset, batch_size=None, num_workers=int(num_workers),
                      pin_memory=torch.cuda.is_available(), persistent_workers=False)


def validation_patches(cases: Sequence[PreprocessedCase], patch_size: Sequence[int],
                       per_case: int = 2, seed: int = 12345) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed set of held-out patches (half centred on foreground), no augmentation."""
    rng = np.random.default_rng(seed)
    out = []
    for case in cases:
        for i in range(per_case):
            img, seg = sample_patch(case, patch_size, force_fg=i % 2 == 0, rng=rng)
            out.append((torch.from_numpy(img)[None], torch.from_numpy(seg.astype(np.int64))[None, None]))
    return out
