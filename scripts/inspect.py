"""`python scripts/inspect.py ...` is `caphuman inspect ...` (see --help)."""

import sys

from caphuman.cli import main

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
