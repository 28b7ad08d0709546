"""distillation: train nnU-Net-style teachers and distill compact students for pacsnode.

Needs the ``train`` extra (torch, MONAI). The phantom generators need only numpy,
scipy and nilearn, so the node's demo can use them without torch.
"""

__version__ = "0.1.0"
