"""Import nnU-Net v2 trained model folders as teachers and deployable ONNX models."""

from distillation.nnunet.importer import (
    FoldEnsemble,
    ImportedModel,
    TransposedNetwork,
    import_nnunet,
    node_mirror_axes,
)
from distillation.nnunet.plans import (
    NnunetConfiguration,
    card_labels,
    card_normalization,
    read_configuration,
    resolve_configuration,
)

__all__ = [
    "FoldEnsemble",
    "ImportedModel",
    "node_mirror_axes",
    "NnunetConfiguration",
    "TransposedNetwork",
    "card_labels",
    "card_normalization",
    "import_nnunet",
    "read_configuration",
    "resolve_configuration",
]
