"""One error base for what a step can hit, carrying whether a retry can help (and so its exit).

Three kinds, one exit code each, mapped once in the steps' entry point (kpigate/steps/common.py):
  UNAVAILABLE  1  a service is down or answered 5xx, a network blip: Argo retries the step
  BAD_INPUT    2  a wrong argument, policy, URI or name: a retry cannot help
  REFUSED      3  the world said no (403, an expired token, a rejected version): nor here
Each interface's error type (RegistryError, StoreError, BackendError, SourceError, StepError)
derives from KpigateError with its usual kind as the class default; the module that talks to
the service sets the kind of each instance from what the service answered.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar


class Kind(Enum):
    UNAVAILABLE = 1
    BAD_INPUT = 2
    REFUSED = 3

    @property
    def exit_code(self) -> int:
        return self.value

    @property
    def retryable(self) -> bool:
        return self is Kind.UNAVAILABLE


class KpigateError(Exception):
    """An error a user can act on; the message says what was wrong and what to do."""

    default_kind: ClassVar[Kind] = Kind.BAD_INPUT

    def __init__(self, message: str = "", *, kind: Kind | None = None) -> None:
        super().__init__(message)
        self.kind = kind or self.default_kind

    @property
    def retryable(self) -> bool:
        return self.kind.retryable


def kind_of_status(status: int | None) -> Kind:
    """The kind of an HTTP answer: none (no answer) or 5xx, 408, 409, 429 are worth retrying."""
    if status is None or status >= 500 or status in (408, 409, 429):
        return Kind.UNAVAILABLE
    if status in (401, 403):
        return Kind.REFUSED
    return Kind.BAD_INPUT
