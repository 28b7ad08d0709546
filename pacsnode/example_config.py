"""The commented example configuration that `pacsnode config init` writes and the demo starts from.

It is the repository's ``config.toml``; a built wheel carries a copy as
``pacsnode/example-config.toml`` (``setup.py`` copies it at build time), so an installed node has
it without the repository.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from pacsnode.errors import PacsnodeError

__all__ = ["example_config_text", "PACKAGED_NAME"]

PACKAGED_NAME = "example-config.toml"
_CHECKOUT = Path(__file__).resolve().parents[1] / "config.toml"


def example_config_text() -> str:
    """The example's text: the packaged copy in an installed wheel, the checkout's config.toml otherwise."""
    packaged = resources.files("pacsnode") / PACKAGED_NAME
    if packaged.is_file():
        return packaged.read_text(encoding="utf-8")
    if _CHECKOUT.is_file():
        return _CHECKOUT.read_text(encoding="utf-8")
    raise PacsnodeError(f"the example configuration must be installed with pacsnode, got neither {_CHECKOUT} nor "
                        f"pacsnode/{PACKAGED_NAME}; reinstall pacsnode")
