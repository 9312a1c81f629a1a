"""Logging for the service: plain text for people, JSON lines for log pipelines (`log_format`)."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import datetime, timezone

_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

#: The ID of the request being handled (set by the service's outermost middleware), so every line
#: logged on its behalf, uvicorn's access line included, can be matched to what the client saw.
current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)

# What a proxy or client may send as its request ID: printable ASCII without spaces (UUIDs, nginx's
# $request_id, trace headers), short enough for a log line. Anything else is replaced, not echoed.
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")


def valid_request_id(candidate: str | None) -> str:
    """The client's (or proxy's) request ID when it is sane, else a new random one; every transport
    asks here, so HTTP headers and gRPC metadata follow one rule."""
    if candidate is not None and _VALID_REQUEST_ID.fullmatch(candidate):
        return candidate
    return uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Stamps records logged while a request is handled with `record.request_id`."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = current_request_id.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class TextFormatter(logging.Formatter):
    """Time, level, logger and message, then ` [request_id=...]` when the line belongs to a request."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's API)
        line = super().formatMessage(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request_id={request_id}]" if request_id else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line with time, level, logger, message, extras and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the root logger once (uvicorn's loggers propagate to it: run uvicorn with
    `log_config=None`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Python warnings (Pillow's DecompressionBombWarning, its TIFF/EXIF UserWarnings) go through the
    # handler above instead of raw to stderr, past the JSON format.
    logging.captureWarnings(True)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
