"""Training presets (``distillation/presets/*.toml``) → frozen, typed dataclasses.

The TOML is walked with pacsnode's config walker, so a misspelt key or a wrong type is one
:class:`~pacsnode.errors.ConfigError` naming the key, e.g.
``optim.lr must be a positive number, got -1``. Tables: ``[data]``, ``[network]``, ``[optim]``,
``[train]``, ``[augment]`` and ``[kd]``; every key has a default.

A bundled ``kd-NAME.toml`` holds only a ``[kd]`` table: a KD recipe (docs/kd-recipes.md), named
NAME wherever KD terms are chosen (``distill distill --kd recokd-public``, a study's recipes).
It replaces the training preset's whole ``[kd]`` table; every other table stays the preset's.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from distillation.data.augment import AugmentConfig
from distillation.losses.kd import KDConfig
from pacsnode.config import build_dataclass  # the one key-naming walker
from pacsnode.errors import ConfigError

__all__ = [
    "DataConfig",
    "NetworkConfig",
    "OptimConfig",
    "TrainConfig",
    "Preset",
    "load_preset",
    "parse_preset",
    "preset_path",
    "with_kd_terms",
    "kd_recipe_names",
    "load_kd_recipe",
]


def _positive() -> dict[str, Any]:
    return {"check": (lambda v: v > 0, "a positive number")}


def _non_negative() -> dict[str, Any]:
    return {"check": (lambda v: v >= 0, "zero or a positive number")}


def _fraction() -> dict[str, Any]:
    return {"check": (lambda v: 0 <= v < 1, "a number from 0 to below 1")}


def _patch() -> dict[str, Any]:
    return {"check": (lambda v: len(v) == 3 and all(p >= 8 for p in v), "three integers of at least 8")}


@dataclass(frozen=True)
class DataConfig:
    """[data]: patches, batches and the held-out split."""

    patch_size: tuple[int, ...] = field(default=(128, 128, 128), metadata=_patch())
    batch_size: int = field(default=2, metadata=_positive())
    batches_per_epoch: int = field(default=250, metadata=_positive())
    oversample_foreground: float = field(default=0.33, metadata=_fraction())
    val_fraction: float = field(default=0.2, metadata=_fraction())
    val_patches_per_case: int = field(default=2, metadata=_positive())
    num_workers: int = field(default=2, metadata=_non_negative())


@dataclass(frozen=True)
class NetworkConfig:
    """[network]: the teacher architecture; nnU-Net's default plan with these overrides."""

    arch: Literal["PlainConvUNet", "ResidualEncoderUNet"] = "PlainConvUNet"
    base_features: int = field(default=32, metadata=_positive())
    max_features: int = field(default=320, metadata=_positive())
    max_stages: int = field(default=0, metadata=_non_negative())  # 0 = as nnU-Net plans
    deep_supervision: bool = True
    min_features: int = field(default=4, metadata=_positive())


@dataclass(frozen=True)
class OptimConfig:
    """[optim]: nnU-Net's SGD (Nesterov, momentum 0.99, poly lr) or AdamW."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = field(default=1e-2, metadata=_positive())
    momentum: float = field(default=0.99, metadata=_fraction())
    weight_decay: float = field(default=3e-5, metadata=_non_negative())
    poly_exponent: float = field(default=0.9, metadata=_positive())
    grad_clip: float = field(default=12.0, metadata=_positive())
    amp: bool = True  # only ever used on CUDA


@dataclass(frozen=True)
class TrainConfig:
    """[train]: epochs, checkpoint and validation cadence, seed."""

    epochs: int = field(default=1000, metadata=_positive())
    checkpoint_every: int = field(default=50, metadata=_positive())
    val_every: int = field(default=10, metadata=_positive())
    seed: int = 0
    progress: bool = True
    threads: int = field(default=0, metadata=_non_negative())  # torch CPU threads; 0 = torch's default


@dataclass(frozen=True)
class Preset:
    """A whole preset file."""

    name: str = "preset"
    description: str = ""
    data: DataConfig = DataConfig()
    network: NetworkConfig = NetworkConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    augment: AugmentConfig = AugmentConfig()
    kd: KDConfig = KDConfig()

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def parse_preset(data: Mapping[str, Any]) -> Preset:
    """Validate a parsed TOML document into a :class:`Preset` (the mapping is not mutated)."""
    return Preset(**build_dataclass(Preset, dict(data)))


def bundled_toml(name_or_path: str | Path, *, prefix: str = "", what: str = "--config",
                 kind: str = "preset") -> Path:
    """A ``.toml`` file path as given, or the name of a preset bundled in ``distillation/presets``
    (``brain-tiny`` → presets/brain-tiny.toml); only bundled names starting with ``prefix`` count."""
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return p
    presets = resources.files("distillation") / "presets"
    bundled = presets / f"{p.name.removesuffix('.toml')}.toml"
    if p.name.startswith(prefix) and bundled.is_file():
        return Path(str(bundled))
    names = sorted(x.name[:-5] for x in presets.iterdir()
                   if x.name.startswith(prefix) and x.name.endswith(".toml"))
    raise ConfigError(f"{what} must be a {kind} file or a bundled {kind} name, got {str(name_or_path)!r}; "
                      f"bundled: {', '.join(names)}")


def read_toml(path: Path, what: str = "preset") -> dict[str, Any]:
    """Parse a preset file; invalid TOML is one ConfigError naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from None


def preset_path(name_or_path: str | Path) -> Path:
    """A file path as given, or the name of a bundled preset (``brain-tiny`` → presets/brain-tiny.toml)."""
    return bundled_toml(name_or_path)


def load_preset(name_or_path: str | Path) -> Preset:
    """Read and validate a preset file (or a bundled preset by name)."""
    return parse_preset(read_toml(preset_path(name_or_path)))


_KD_TERMS = ("logit", "sard", "ca")
_KD_RECIPE_PREFIX = "kd-"


def kd_recipe_names() -> list[str]:
    """The bundled KD recipes (``presets/kd-NAME.toml``) by NAME, sorted."""
    folder = resources.files("distillation") / "presets"
    return sorted(x.name[len(_KD_RECIPE_PREFIX):-5] for x in folder.iterdir()
                  if x.name.startswith(_KD_RECIPE_PREFIX) and x.name.endswith(".toml"))


def load_kd_recipe(name: str) -> KDConfig:
    """The ``[kd]`` table of the bundled recipe ``kd-NAME.toml``, over :class:`KDConfig`'s defaults."""
    path = bundled_toml(f"{_KD_RECIPE_PREFIX}{name}", prefix=_KD_RECIPE_PREFIX, what="a KD recipe",
                        kind="KD recipe")
    data = read_toml(path, "KD recipe")
    extra = sorted(set(data) - {"name", "description", "kd"})
    if extra:
        raise ConfigError(f"KD recipe {path.name} must hold only name, description and [kd], got {', '.join(extra)}")
    return parse_preset(data).kd


def with_kd_terms(preset: Preset, terms: str | None) -> Preset:
    """The preset with exactly the comma-separated KD terms switched on, or with the whole ``[kd]``
    table of the bundled KD recipe ``terms`` names (None keeps the preset's)."""
    if terms is None:
        return preset
    if terms.strip() in kd_recipe_names():
        return replace(preset, kd=load_kd_recipe(terms.strip()))
    names = [t.strip() for t in terms.split(",") if t.strip()]
    bad = [t for t in names if t not in _KD_TERMS]
    if bad:
        raise ConfigError(f"--kd must list terms from {', '.join(_KD_TERMS)}, got {', '.join(bad)}; "
                          f"or name one KD recipe from {', '.join(kd_recipe_names())}")
    return replace(preset, kd=replace(preset.kd, **{t: t in names for t in _KD_TERMS}))
