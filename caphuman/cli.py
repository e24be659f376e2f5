"""The `caphuman` command: sample | sweep | demo | doctor | convert | preprocess | train | eval | inspect.

Each sub-command maps to one typed function; user errors (a missing file, a photo without a
face, a bad config value) print one sentence and exit with code 2, without a traceback.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Callable, Sequence

from caphuman.errors import CapHumanError

logger = logging.getLogger("caphuman")

EXIT_USER_ERROR = 2

# sub-command -> module with add_arguments(parser) and run(args); the module docstring is its help.
COMMANDS: dict[str, str] = {
    "sample": "caphuman.commands.sample",
    "sweep": "caphuman.commands.sweep",
    "demo": "caphuman.commands.demo",
    "doctor": "caphuman.commands.doctor",
    "download": "caphuman.commands.download",
    "convert": "caphuman.commands.convert",
    "preprocess": "caphuman.commands.preprocess",
    "train": "caphuman.commands.train",
    "eval": "caphuman.commands.eval",
    "inspect": "caphuman.commands.inspect",
}


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="caphuman",
        description="CapHuman: photos of a person from ONE reference photo, with 3D head control.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(
            name,
            help=module.__doc__.strip().splitlines()[0],
            description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        # argparse has printed usage and its one-line error (a bad flag: exit 2) or the help
        # (exit 0); returned, so main() answers every user error the same way.
        return int(exit_request.code or 0)
    # What config.yaml records: the command as typed, quoted so it can be pasted back into a shell.
    args.command_line = shlex.join(["caphuman", *argv])
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from caphuman.quiet import configure

    configure(verbose=args.verbose)
    handler: Callable[[argparse.Namespace], int | None] = args.handler
    try:
        return int(handler(args) or 0)
    except CapHumanError as error:
        logger.error("%s", error)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        logger.error("Interrupted.")
        return 130


if __name__ == "__main__":
    sys.exit(main())
