"""The errors of the fleet control plane, each with the HTTP status the service answers.

They hang under :class:`~edgeinfer.errors.EdgeInferError`::

    EdgeInferError
    └── FleetError                   anything in edgeinfer.fleet; ``status`` is its HTTP code
        ├── Refused                  the service will not take a request as sent (4xx)
        │   ├── BadReport        400 malformed JSON, a schema violation, a skewed clock
        │   ├── Unauthenticated  401 no or wrong admin token, an unknown device or
        │   │                        enrollment token, a signature that does not verify
        │   ├── Forbidden        403 a revoked device, an enrollment token used up
        │   ├── NotFound         404 no such device
        │   ├── RequestTimeout   408 a body that does not arrive in time
        │   ├── Conflict         409 a replayed or out-of-order report counter
        │   └── TooLarge         413 a body over the service's cap
        ├── FleetUnavailable         the device side could not reach the fleet (transport,
        │                            5xx); reports stay in the outbox and go later
        ├── FleetStoreError          the database cannot be opened or migrated
        └── BadRolloutDocument       (device side) a rollout document not to follow

Refusals are final for that request: the device drops a refused report from its outbox
(and logs why) instead of retrying it forever, as python-tuf never retries bad metadata.
"""

from __future__ import annotations

from edgeinfer.errors import EdgeInferError

__all__ = [
    "BadReport",
    "BadRolloutDocument",
    "Conflict",
    "FleetError",
    "FleetStoreError",
    "FleetUnavailable",
    "Forbidden",
    "NotFound",
    "Refused",
    "RequestTimeout",
    "TooLarge",
    "Unauthenticated",
]


class FleetError(EdgeInferError):
    """Root of the errors raised by :mod:`edgeinfer.fleet`."""

    status: int = 500


class Refused(FleetError):
    """The fleet service refuses the request; the message says why."""

    status = 400


class BadReport(Refused):
    status = 400


class Unauthenticated(Refused):
    status = 401


class Forbidden(Refused):
    status = 403


class NotFound(Refused):
    status = 404


class RequestTimeout(Refused):
    status = 408


class Conflict(Refused):
    """A counter the fleet already passed; ``last_counter`` is the last one it accepted."""

    status = 409

    def __init__(self, message: str, *, last_counter: int | None = None) -> None:
        super().__init__(message)
        self.last_counter = last_counter


class TooLarge(Refused):
    status = 413


class FleetUnavailable(FleetError):
    """The fleet could not be reached or answered 5xx; try again later."""

    status = 503


class FleetStoreError(FleetError):
    """The fleet database cannot be opened or migrated."""

    status = 500


def refusal(status: int, message: str, last_counter: int | None = None) -> Refused:
    """The ``Refused`` subclass for an HTTP status the service answered (device side)."""
    if status == 409:
        return Conflict(message, last_counter=last_counter)
    kinds: dict[int, type[Refused]] = {
        400: BadReport,
        401: Unauthenticated,
        403: Forbidden,
        404: NotFound,
        409: Conflict,
        413: TooLarge,
    }
    return kinds.get(status, Refused)(message)


class BadRolloutDocument(FleetError):
    """A rollout document a device will not follow: forged, expired, stale or not its model.

    Device side: the agent then goes by the plan TUF published, as if the fleet were down.
    """

    status = 400
