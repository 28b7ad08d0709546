"""The one exception tree of pacsnode.

::

    PacsnodeError                      anything the node refuses, with a one-line reason
    ├── ConfigError                    config.toml: unknown key, wrong type, bad value (names the key)
    ├── ReceiveError                   an instance that cannot be accepted (undecodable, no space)
    ├── LedgerError                    the ledger refuses a transition
    ├── VolumeError                    a series that is not one clean volume (geometry, channels)
    ├── ModelError                     a model file or its card is unusable
    ├── InferenceError                 running a model failed
    ├── ResultsError                   a SEG or SR could not be written
    └── DeliveryError                  a destination refused or could not be reached

Messages follow one formula: the rule, the value received, what is valid.
"""

from __future__ import annotations

__all__ = [
    "PacsnodeError",
    "ConfigError",
    "ReceiveError",
    "LedgerError",
    "VolumeError",
    "ModelError",
    "InferenceError",
    "ResultsError",
    "DeliveryError",
]


class PacsnodeError(Exception):
    """Base class of every error pacsnode raises on purpose."""


class ConfigError(PacsnodeError):
    """The configuration is invalid; the message names the key."""


class ReceiveError(PacsnodeError):
    """An instance cannot be accepted."""


class LedgerError(PacsnodeError):
    """The ledger refuses an operation."""


class VolumeError(PacsnodeError):
    """A series does not form one clean volume."""


class ModelError(PacsnodeError):
    """A model file or its model card is unusable."""


class InferenceError(PacsnodeError):
    """Running a model on a volume failed."""


class ResultsError(PacsnodeError):
    """A SEG or SR could not be built."""


class DeliveryError(PacsnodeError):
    """A destination refused a result or could not be reached."""
