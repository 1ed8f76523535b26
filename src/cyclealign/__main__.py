"""``python -m cyclealign``: the ``cyclealign`` command, for ``accelerate launch -m cyclealign
train ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
