"""The node runs on a hospital CPU server without a deep-learning framework."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pacsnode


def test_no_pacsnode_module_imports_torch() -> None:
    modules = [
        m.name
        for m in pkgutil.walk_packages(pacsnode.__path__, "pacsnode.")
        if not m.name.endswith("__main__")
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in {'torch', 'monai', 'tensorflow', 'jax'})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"pacsnode imported a deep-learning framework: {out.stdout}"
