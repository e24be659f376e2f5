"""`python scripts/sweep.py ...` is `caphuman sweep ...` (see --help)."""

import sys

from caphuman.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
