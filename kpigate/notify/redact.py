"""Keep webhook URLs, tokens and routing keys out of log lines and error messages.

The client libraries log request URLs at DEBUG (slack-sdk logs the whole webhook URL, which
is the secret), so every secret a notifier is built with is registered here, and a filter
on the loggers we hand to those libraries rewrites any record that would print one.
"""

from __future__ import annotations

import logging
import threading

MASK = "***"
_MIN_SECRET = 6  # shorter strings would mask ordinary words
_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(secret: str) -> None:
    """Mask `secret` from now on in redact() and in records seen by SecretFilter."""
    secret = secret.strip()
    if len(secret) >= _MIN_SECRET:
        with _lock:
            _secrets.add(secret)


def redact(text: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)  # longest first: URLs hold tokens
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


class SecretFilter(logging.Filter):
    """Rewrites a record's message with every registered secret masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            # A traceback would print the exception's text unfiltered; keep only its type.
            exc = record.exc_info[1]
            record.msg = f"{record.msg} ({type(exc).__name__}: {redact(str(exc))})"
            record.exc_info, record.exc_text = None, None
        return True


_FILTER = SecretFilter()


def guarded_logger(name: str) -> logging.Logger:
    """A logger whose records pass through SecretFilter (added once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
