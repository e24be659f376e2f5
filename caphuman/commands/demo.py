"""Web demo in the browser (gradio): one or two people, pose photos, 3D head sliders, 'turn the head'.

Serves on http://127.0.0.1:7860 by default (this machine only; use --host 0.0.0.0 to share it on
your network, at your own risk: there is no login). One generation runs at a time; other
visitors wait in a queue. Nothing is sent to the internet (no share links, no analytics).

Examples:
  caphuman demo --config configs/tiny.yaml                          # offline, tiny random model, CPU
  caphuman demo --config configs/caphuman_sd15.yaml --weights checkpoints --port 7861
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket

from caphuman.errors import CapHumanError

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default="configs/caphuman_sd15.yaml", help="model + sampling config (YAML)")
    parser.add_argument("--weights", default="checkpoints", help="folder with the weights files; SD 1.5 files in it are offered as styles")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default 7860)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--output-dir", help="where results are kept (default: a fresh temporary folder)")


def check_address(host: str, port: int) -> None:
    """Fail with one sentence, before any model loads, if the server could not listen there
    (gradio would only find out after start-up, with a traceback)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a closed port in TIME_WAIT is free
            probe.bind((host, port))
    except socket.gaierror:
        raise CapHumanError(f"--host {host} is not an address of this machine.") from None
    except OSError as error:
        if error.errno == errno.EADDRNOTAVAIL:
            raise CapHumanError(f"--host {host} is not an address of this machine.") from None
        raise CapHumanError(f"Port {port} on {host} is in use or not allowed ({error.strerror}): pick another with --port.") from None


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65535:
        raise CapHumanError(f"--port must be between 1 and 65535, got {args.port}.")
    check_address(args.host, args.port)
    from caphuman.build import resolve_device
    from caphuman.config import load_config
    from caphuman.demo.callbacks import DemoBackend

    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own health checks, one line per request
    load_config(args.config)  # a bad config fails here, before gradio starts
    resolve_device(args.device)
    backend = DemoBackend(args.config, args.weights, args.device, args.output_dir)
    from caphuman.demo.app import launch

    logger.info("CapHuman demo on http://%s:%d (results in %s); Ctrl+C stops it.", args.host, args.port, backend.output_dir)
    try:
        launch(backend, args.host, args.port, block=True)
    finally:
        backend.close()
    return 0
