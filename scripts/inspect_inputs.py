"""`python scripts/inspect_inputs.py ...` is `caphuman inspect ...` (see --help). Not `inspect.py`: Python puts this
folder first on the import path, so a file of that name would stand in for the standard library's `inspect`."""

import sys

from caphuman.cli import main

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
