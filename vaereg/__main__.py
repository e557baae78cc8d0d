"""``python -m vaereg``."""

import sys

from vaereg.cli import main

if __name__ == "__main__":
    sys.exit(main())
