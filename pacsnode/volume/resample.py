"""Resample one volume into another volume's grid, in patient coordinates."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage

from pacsnode.errors import VolumeError
from pacsnode.volume.reader import Volume

__all__ = ["resample_to_reference"]


def resample_to_reference(volume: Volume, reference: Volume, *, order: int = 3) -> Volume:
    """``volume`` resampled onto ``reference``'s grid (shape and affine); zero outside its field of view.

    Both must share a FrameOfReferenceUID (the same patient coordinate system). The
    mapping is affine, so :func:`scipy.ndimage.affine_transform` is used: the same spline
    interpolation as ``map_coordinates`` without materialising a coordinate array.
    The returned volume keeps ``volume``'s UIDs and datasets with the reference geometry.
    """
    if volume.frame_of_reference_uid != reference.frame_of_reference_uid:
        raise VolumeError(
            "all input series must share the reference series' FrameOfReferenceUID, got "
            f"{volume.frame_of_reference_uid!r} for series {volume.series_instance_uid} "
            f"({volume.series_description or volume.modality}) and {reference.frame_of_reference_uid!r} "
            f"for the reference series {reference.series_instance_uid}; register the series first"
        )
    if volume.same_grid(reference):
        return volume
    # reference index -> patient -> volume index
    m = np.linalg.inv(volume.affine) @ reference.affine
    out = np.empty(reference.shape, dtype=np.float32)
    src = volume.array
    if order > 1:
        src = ndimage.spline_filter(src, order=order, output=np.float32, mode="nearest")
    ndimage.affine_transform(src, m[:3, :3], offset=m[:3, 3], output_shape=reference.shape, output=out,
                             order=order, mode="constant", cval=0.0, prefilter=False)
    return replace(volume, array=out, affine=reference.affine.copy(), spacing=reference.spacing)
