"""`python scripts/sample.py ...` is `caphuman sample ...` (see --help)."""

import sys

from caphuman.cli import main

if __name__ == "__main__":
    sys.exit(main(["sample", *sys.argv[1:]]))
