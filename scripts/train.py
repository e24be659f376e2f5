"""`python scripts/train.py ...` is `caphuman train ...` (see --help)."""

import sys

from caphuman.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
