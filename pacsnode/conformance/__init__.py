"""The DICOM Conformance Statement, generated from the code (``pacsnode conformance``).

::

    facts    what the node negotiates, read from the SCP's, the outbox's and the config's definitions
    render   the statement as Markdown in the outline of DICOM PS3.2
"""

from __future__ import annotations

from pacsnode.config import Settings
from pacsnode.conformance.facts import Facts, gather
from pacsnode.conformance.render import render

__all__ = ["Facts", "gather", "render", "statement"]


def statement(settings: Settings, config_name: str = "config.toml") -> str:
    """The conformance statement of a node configured by ``settings``."""
    return render(gather(settings), config_name)
