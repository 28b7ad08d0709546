"""Docs that stay true: a page that names a model hash names the shipped model's, and the figures
the default-model page gives for the shipped student are those its card carries."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from pacsnode.inference.model import Model

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "pacsnode" / "models" / "brain-tumor.onnx"
PAGES = sorted([*(REPO / "docs").glob("*.md"), REPO / "README.md", *(REPO / "deploy").glob("*.md")])
# "sha256 3a56693c0099", "sha256: 3a56...", "sha256=3a56...", "(sha256 `3a56...`)"
HASH = re.compile(r"sha-?256[\s:=`(]{1,4}([0-9a-f]{12,64})\b", re.I)


def shipped_sha256() -> str:
    return hashlib.sha256(SHIPPED.read_bytes()).hexdigest()


def stale_hashes(text: str, sha: str) -> list[str]:
    """The model hashes ``text`` names that are not (a prefix of) ``sha``."""
    return [h for h in HASH.findall(text) if not sha.startswith(h.lower())]


def test_the_checker_finds_a_stale_hash_and_accepts_the_shipped_one() -> None:
    sha = shipped_sha256()
    old = "Model: brain-tumor 0.1.0 (sha256 60451188c854); study: synthetic brain MR"
    assert stale_hashes(old, sha) == ["60451188c854"]
    assert stale_hashes(f"Model: brain-tumor 0.1.0 (sha256 {sha[:12]}); sha256: {sha}", sha) == []


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_page_names_a_model_hash_other_than_the_shipped_one(page: Path) -> None:
    stale = stale_hashes(page.read_text(encoding="utf-8"), shipped_sha256())
    assert stale == [], (f"{page.relative_to(REPO)} names model hash(es) {stale}, but the shipped "
                         f"pacsnode/models/brain-tumor.onnx is sha256 {shipped_sha256()[:12]}: regenerate the "
                         "page with its command (see its first lines)")


def test_the_end_to_end_page_was_measured_with_the_shipped_model() -> None:
    text = (REPO / "docs" / "e2e.md").read_text(encoding="utf-8")
    assert f"(sha256 {shipped_sha256()[:12]})" in text, "docs/e2e.md: rerun benchmarks/e2e.py"


def test_the_default_model_page_gives_the_shipped_cards_figures() -> None:
    card = Model.load(SHIPPED, threads=1, backend="onnxruntime").card
    test = card.test_metrics  # held-out test figures (the shipped card predates the "test" key)
    dice, hd95 = test["dice"], test["hd95_mm"]
    text = (REPO / "docs" / "default-model.md").read_text(encoding="utf-8")
    (row,) = [ln for ln in text.splitlines() if ln.startswith("| **shipped student**")]
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    assert cells[3:6] == [f"{dice[k]:.3f}" for k in ("whole_tumor", "tumor_core", "enhancing")], row
    assert cells[6] == f"{sum(dice.values()) / 3:.3f}", row
    assert cells[7] == f"{hd95['whole_tumor']:.1f}", row
    assert f"{card.provenance['parameters']:,}" in cells[1], row
