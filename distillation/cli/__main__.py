"""``python -m distillation.cli`` (and ``torchrun -m distillation.cli``) runs the `distill` command."""

import sys

from distillation.cli import main

sys.exit(main())
