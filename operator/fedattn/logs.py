"""Structured JSON logs for every component: one object per line with session/participant/round ids.

Pass ids through ``extra={"session": ..., "participant": ..., "round": ...}`` (or a LoggerAdapter);
they become top-level keys so a log pipeline can filter one session or one participant.
"""

from __future__ import annotations

import json
import logging
import sys
import time

CONTEXT_KEYS = ("session", "participant", "round", "layer", "component", "reason")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in CONTEXT_KEYS:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(component: str, *, level: str = "INFO") -> None:
    """Route the root logger to stderr as JSON lines tagged with the component name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(lambda record: setattr(record, "component", getattr(record, "component", component)) or True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
