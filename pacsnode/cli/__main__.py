import sys

from pacsnode.cli import main

sys.exit(main())
