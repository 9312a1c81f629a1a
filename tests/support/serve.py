"""The real service (the same server as `python -m app`) with test and benchmark instruments:
`python -m tests.support.serve --slow-s 1.0 --fail-batches 1 --no-split-resize` (settings from
TRANSXNET_*). Every batch after warm-up is delayed by `--slow-s`, the first `--fail-batches` of them
raise after that delay (as a crash mid-inference would), and `--no-split-resize` keeps every resize
on one thread (the benchmarks' A/B runs).
"""

from __future__ import annotations

import argparse
import sys

from app.__main__ import serve
from app.batching import ModelRunner
from app.logging_setup import configure_logging
from app.main import create_app
from app.runner import OnnxRunner
from app.settings import load_settings
from tests.support.runners import FailingRunner, SlowRunner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow-s", type=float, default=0.0, help="delay every batch after warm-up")
    parser.add_argument("--fail-batches", type=int, default=0, help="fail this many batches after warm-up")
    parser.add_argument("--no-split-resize", action="store_true", help="resize every image on one thread")
    args = parser.parse_args()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)

    def wrap(inner: OnnxRunner) -> ModelRunner:
        runner: ModelRunner = FailingRunner(inner, failures=args.fail_batches)
        return SlowRunner(runner, args.slow_s) if args.slow_s > 0 else runner

    instrumented = args.slow_s > 0 or args.fail_batches > 0
    app = create_app(settings, runner=wrap if instrumented else None, split_resize=not args.no_split_resize)
    sys.exit(serve(app, settings))


if __name__ == "__main__":
    main()
