"""Logging: one line per event, text or JSON, with every known secret masked before it is written."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

MASK = "***"


class SecretFilter(logging.Filter):
    """Replace secret values anywhere in a record (message, arguments, extra fields)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    @staticmethod
    def _forms(secret: str) -> list[str]:
        """A secret and the Basic credentials made from it (a proxy may echo the header back)."""
        import base64

        users = ("", "user", "VstsAgent")
        return [secret, *(base64.b64encode(f"{user}:{secret}".encode()).decode() for user in users)] if secret else []

    def add(self, secret: str) -> None:
        """Mask a secret and the Basic credentials made from it."""
        for form in self._forms(secret):
            if form not in self.secrets:
                self.secrets.append(form)

    def discard(self, secret: str) -> None:
        """Stop masking a secret that can no longer be used (an expired token), so the list stays short."""
        forms = set(self._forms(secret))
        self.secrets = [s for s in self.secrets if s not in forms]

    def scrub(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.scrub(record.getMessage())
            record.args = None
            fields = getattr(record, "fields", None)
            if isinstance(fields, dict):
                record.fields = json.loads(self.scrub(json.dumps(fields, default=str)))
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self.scrub(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


def _format_value(value: Any) -> str:
    if isinstance(value, str) and value and " " not in value and "=" not in value:
        return value
    return json.dumps(value, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        line = f"{stamp} {record.levelname:<7} {record.getMessage()}"
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={_format_value(v)}" for k, v in fields.items())
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat().replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, default=str)


SECRETS = SecretFilter()


def setup(*, fmt: str = "text", level: str = "info", stream: TextIO | None = None) -> None:
    """Route the reconciler's loggers to one stream in the chosen format, secrets masked."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(SECRETS)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("urllib3").setLevel(max(logging.WARNING, root.level))
