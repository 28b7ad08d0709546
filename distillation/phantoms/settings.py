"""Named phantom settings: ``default`` (the generators as they always were) and ``hard`` (benchmark v2).

``hard`` is the setting of issue 23 where a network's capacity should matter: 0-3 lesions, overlapping
contrasts, about ten anatomical structures as extra labels, boundary label noise (see
:mod:`.brain_hard` and :mod:`.ct_hard`). ``default`` output never changes with this module.
"""

from __future__ import annotations

from .case import PhantomCase
from .fields import parse_spacing

__all__ = ["SETTINGS", "DEFAULT_SPACING", "generate_case"]

SETTINGS = ("default", "hard")
DEFAULT_SPACING = {"brain": "2", "ct": "3,2,2"}


def generate_case(kind: str, seed: int, spacing: float | str | tuple[float, ...] | None = None, *,
                  setting: str = "default", tumor_radius_mm: tuple[float, float] | None = None) -> PhantomCase:
    """One case of ``kind`` (brain / ct) in ``setting``; ``spacing`` None = the kind's default."""
    if kind not in DEFAULT_SPACING:
        raise ValueError(f"phantom kind must be one of {', '.join(DEFAULT_SPACING)}, got {kind!r}")
    if setting not in SETTINGS:
        raise ValueError(f"phantom setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if tumor_radius_mm is not None and kind != "brain":
        raise ValueError(f"a tumour radius range applies to brain phantoms, got kind {kind!r}")
    grid = parse_spacing(spacing if spacing is not None else DEFAULT_SPACING[kind])
    radius = {} if tumor_radius_mm is None else {"tumor_radius_mm": tumor_radius_mm}
    if kind == "brain":
        if setting == "hard":
            from .brain_hard import generate_brain_hard_case

            return generate_brain_hard_case(seed, grid, **radius)
        from .brain import generate_brain_case

        return generate_brain_case(seed, grid, **radius)
    if setting == "hard":
        from .ct_hard import generate_ct_hard_case

        return generate_ct_hard_case(seed, grid)
    from .ct import generate_ct_case

    return generate_ct_case(seed, grid)
