"""Run the real service in a subprocess with an instrumented runner, through the same server class
as `python -m app`: `python -m tests.app.serve_helper --slow-s 1.0` (settings from TRANSXNET_*)."""

from __future__ import annotations

import argparse
import sys

from app.__main__ import serve
from app.logging_setup import configure_logging
from app.main import create_app
from app.settings import load_settings
from tests.app.runners import SlowRunner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow-s", type=float, default=0.0, help="Delay every batch after warm-up.")
    args = parser.parse_args()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    runner = (lambda inner: SlowRunner(inner, args.slow_s)) if args.slow_s > 0 else None
    sys.exit(serve(create_app(settings, runner=runner), settings))


if __name__ == "__main__":
    main()
