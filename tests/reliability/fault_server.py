"""The real service (same server class as `python -m app`) with injected runner faults, for the
reliability tests: `python -m tests.reliability.fault_server --slow-s 1.0 --fail-batches 1`.

`tests/app/serve_helper.py` only slows the runner; the fault tests also need one failing batch, so
this composes the runners of `tests/app/runners.py`: every batch after warm-up is delayed by
`--slow-s`, and the first `--fail-batches` of them raise after that delay (as a crash mid-inference
would).
"""

from __future__ import annotations

import argparse
import sys

from app.__main__ import serve
from app.batcher import ModelRunner
from app.logging_setup import configure_logging
from app.main import create_app
from app.runner import OnnxRunner
from app.settings import load_settings
from tests.app.runners import FailingRunner, SlowRunner


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slow-s", type=float, default=0.0, help="delay every batch after warm-up")
    parser.add_argument("--fail-batches", type=int, default=0, help="fail this many batches after warm-up")
    args = parser.parse_args()
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)

    def wrap(inner: OnnxRunner) -> ModelRunner:
        runner: ModelRunner = FailingRunner(inner, failures=args.fail_batches)
        return SlowRunner(runner, args.slow_s) if args.slow_s > 0 else runner

    sys.exit(serve(create_app(settings, runner=wrap), settings))


if __name__ == "__main__":
    main()
