"""`python scripts/convert.py --from caphuman.ckpt --out checkpoints/caphuman` is `caphuman convert ...`."""

import sys

from caphuman.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
