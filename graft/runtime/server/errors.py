"""Typed HTTP errors: each carries its status code and a one-line message.

Every answer that is not 200 is one of these, sent as ``{"error": "..."}``
(the Open Inference Protocol's error body).
"""

from __future__ import annotations

from graft.errors import GraftError


class ServerError(GraftError):
    """Base class: an answer other than 200."""

    status = 500
    reason = "BACKEND"  # the failure reason label in /metrics


class BadRequest(ServerError):
    status = 400
    reason = "REJECTED"


class NotFound(ServerError):
    status = 404
    reason = "REJECTED"


class RequestTimeout(ServerError):
    """The client sent its body too slowly (``--body-timeout-s``)."""

    status = 408
    reason = "REJECTED"


class PayloadTooLarge(ServerError):
    status = 413
    reason = "REJECTED"


class UnsupportedMediaType(ServerError):
    status = 415
    reason = "REJECTED"


class Unavailable(ServerError):
    """The queue is full, the model's batch worker stopped, or the server is shutting down."""

    status = 503
    reason = "UNAVAILABLE"


class DeadlineExceeded(ServerError):
    status = 504
    reason = "TIMEOUT"


class ClientGone(ServerError):
    """The client closed the connection before its answer was ready; nobody reads this answer.

    499 is nginx's "client closed request"; it only ever reaches the metrics (reason CANCELED).
    """

    status = 499
    reason = "CANCELED"
