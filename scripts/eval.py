"""`python scripts/eval.py ...` is `caphuman eval ...` (see --help)."""

import sys

from caphuman.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
