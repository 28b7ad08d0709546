"""Write pacsnode/demo/data/brain-phantom.npz: the demo's synthetic brain MR case, shipped in the
package so `pacsnode demo` needs neither nilearn nor torch.

Needs the [train] extra (nilearn carries the ICBM152 2009a template the generator deforms):

    .venv/bin/python scripts/make-demo-phantom.py

The case is distillation.phantoms.generate_brain_case(42, spacing=(2, 2, 2)), the case the demo
has always used; images are stored as uint16 (they are integer-valued), labels as uint8.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from distillation.phantoms import generate_brain_case

SEED = 42
SPACING = (2.0, 2.0, 2.0)
OUT = Path(__file__).resolve().parents[1] / "pacsnode" / "demo" / "data" / "brain-phantom.npz"


def main() -> None:
    case = generate_brain_case(SEED, spacing=SPACING)
    images = {}
    for name, img in case.images.items():
        if not (np.all(img == np.rint(img)) and img.min() >= 0 and img.max() <= 65535):
            raise SystemExit(f"channel {name} is not integer-valued in 0..65535; store it otherwise")
        images[name] = img.astype(np.uint16)
    np.savez_compressed(
        OUT, **images, labels=case.labels.astype(np.uint8), affine_lps=case.affine_lps,
        spacing=np.asarray(case.spacing), seed=np.asarray(SEED), channels=np.asarray(list(case.images)),
        meta=np.asarray(json.dumps({**case.meta, "label_names": case.label_names})))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): seed {SEED}, shape {case.shape}, spacing {case.spacing}")


if __name__ == "__main__":
    main()
