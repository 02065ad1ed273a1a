"""Errors a user can cause. The CLI prints these without a traceback and exits 2."""

from __future__ import annotations

_WORKER_MARK = "Original Traceback"


class UserError(Exception):
    """Something the user can fix: the message says what, where, and what to do.

    DataLoader workers re-raise exceptions in the main process as ``type(exc)(formatted_text)``
    where the text holds the worker's whole traceback; we keep only the original message so the
    user still sees one clear sentence.
    """

    def __init__(self, message: str):
        if _WORKER_MARK in message:
            tail = message.rsplit(f"{type(self).__name__}: ", 1)[-1]
            message = tail.strip()
        super().__init__(message)


class ConfigError(UserError):
    """A config file or override is wrong (unknown key, bad value)."""


class DataError(UserError):
    """A dataset folder, manifest or image is missing or unreadable."""


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


class CheckpointError(UserError):
    """A checkpoint could not be written or read (disk full, read-only folder, corrupt file)."""
