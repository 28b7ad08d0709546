"""The card of a model shipped as the node's default: ``python -m distillation.study.ship``.

Reads a student checkpoint, its teacher checkpoint and the held-out evaluation written by
``distill evaluate``, and writes the model card JSON that ``distill export --card`` embeds: the
checkpoint's card (channels, labels, spacing, normalization) with the shipped name and version,
an intended use that says the model was trained on synthetic phantoms and is not for clinical
use, and provenance (teacher, width, KD method, parameters, dataset, training, and ``test``: the
Dice/HD95 per region on the held-out test cases, measured through the node's inference; cards
written before issue 23 called that ``validation``, which ``ModelCard.test_metrics`` still reads)::

    python -m distillation.study.ship --student S.pt --teacher T.pt --evaluation eval.json \\
        --postprocessing postprocessing.json --dataset-note "..." --out card.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_INTENDED_USE", "shipped_card", "main"]

DEFAULT_INTENDED_USE = ("Research and demonstration only. Trained on synthetic phantoms "
                        "(procedural brain-tumor MR, not patient data). Not for clinical use.")


def shipped_card(student: str | Path, teacher: str | Path, evaluation: str | Path, *, name: str, version: str,
                 dataset_note: str = "", largest_component: Sequence[int] = ()) -> dict[str, Any]:
    """The model card (a dict, validated by the node's card validator) for a shipped student;
    ``largest_component``: the post-processing the evaluation was made with (the study's
    ``postprocessing.json``)."""
    from distillation.checkpoint import load_checkpoint
    from distillation.evaluate.postprocessing import card_with_postprocessing
    from distillation.export import validate_card
    from distillation.networks import count_parameters

    s, t = load_checkpoint(student), load_checkpoint(teacher)
    ev = json.loads(Path(evaluation).read_text(encoding="utf-8"))
    summary = ev["summary"]
    structures = list(ev["settings"].get("regions") or {}) or list(summary)
    s_params = count_parameters(s.build_network(deep_supervision=False))
    t_params = count_parameters(t.build_network(deep_supervision=False))
    s_preset, t_preset = s.extra.get("preset", {}), t.extra.get("preset", {})
    feats = t.arch_kwargs.get("features_per_stage", [])
    card = card_with_postprocessing(s.card, largest_component)
    card.update(name=name, version=version, intended_use=DEFAULT_INTENDED_USE,
                description=(f"Brain-tumor segmentation (edema, necrotic core, enhancing tumor) from T1, T1ce, T2 "
                             f"and FLAIR: a width-{s.width_factor:g} {s.network_class_name} student "
                             f"({s_params:,} parameters) distilled from a {t_params:,}-parameter teacher with "
                             f"{s.extra.get('kd', 'KD')}. Trained on synthetic phantoms only."))
    card["provenance"] = {
        "teacher": f"{t.network_class_name} {feats} features ({t_params:,} parameters), "
                   f"preset {t_preset.get('name', '?')}, {t.epoch} epochs",
        "teacher_parameters": t_params,
        "width_factor": s.width_factor,
        "kd_method": s.extra.get("kd", "none"),
        "parameters": s_params,
        "dataset": dataset_note or str(card.get("provenance", {}).get("dataset", "")),
        "training": {"preset": s_preset.get("name"), "student_epochs": s.epoch, "teacher_epochs": t.epoch,
                     "batches_per_epoch": s_preset.get("data", {}).get("batches_per_epoch"),
                     "patch_size": s_preset.get("data", {}).get("patch_size")},
        "test": {
            "split": f"held-out test cases (imagesTs, {len(ev['cases'])} cases; never used for training or for "
                     "choosing the model), measured through pacsnode.inference",
            "dice": {k: summary[k]["dice"]["mean"] for k in structures},
            "hd95_mm": {k: summary[k]["hd95"]["mean"] for k in structures},
        },
    }
    return validate_card(card)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m distillation.study.ship", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", required=True, type=Path)
    p.add_argument("--teacher", required=True, type=Path)
    p.add_argument("--evaluation", required=True, type=Path, help="distill evaluate JSON (held-out cases)")
    p.add_argument("--name", default="brain-tumor")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--dataset-note", default="", help="how the training data was made")
    p.add_argument("--postprocessing", type=Path,
                   help="the study's postprocessing.json for this student (what the evaluation ran with)")
    p.add_argument("--out", required=True, type=Path, help="card JSON to write")
    args = p.parse_args(argv)
    lcc = (json.loads(args.postprocessing.read_text(encoding="utf-8"))["largest_component"]
           if args.postprocessing else [])
    card = shipped_card(args.student, args.teacher, args.evaluation, name=args.name, version=args.version,
                        dataset_note=args.dataset_note, largest_component=lcc)
    args.out.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
