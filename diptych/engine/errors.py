"""Typed engine errors. The gateway maps each to an HTTP status; engines never know HTTP."""

from __future__ import annotations


class EngineError(Exception):
    """Base class. ``param`` names the offending request field, when there is one."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequestError(EngineError):
    """The request is well formed but cannot be served as asked (bad value, over a limit)."""


class CapabilityError(InvalidRequestError):
    """The loaded model cannot do this task (for example edit on a text-to-image checkpoint)."""


class QueueFullError(EngineError):
    """Admission refused: the engine already holds as many requests as it may."""

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, code="queue_full")
        self.retry_after_s = retry_after_s


class DeadlineExceededError(EngineError):
    """The request ran past its deadline and was aborted."""


class EngineUnavailableError(EngineError):
    """An engine is starting, dead or shutting down."""
