"""Typed errors. The CLI prints ``str(error)`` on one line and exits with ``exit_code``.

Exit codes: 2 for bad usage or bad input (the caller can fix it), 1 for a check
that ran and failed (parity, verification budgets).
"""


class GraftError(Exception):
    """Base class. Messages say what was received, what is allowed, what to do."""

    exit_code = 2


class DataError(GraftError):
    """A dataset folder or CSV that cannot be used for training."""


class ImageError(GraftError):
    """An image that cannot be decoded, or is too large to decode safely."""


class ImageTooLarge(ImageError):
    """An image whose header promises more pixels than the configured limit."""


class UnsupportedImage(ImageError):
    """Bytes that are not an image format this runtime can decode."""


class BackboneError(GraftError):
    """An unknown backbone, an unreadable source model or a bad cut layer."""


class WeightsError(GraftError):
    """Weights that cannot be found, downloaded or loaded."""


class BundleError(GraftError):
    """A bundle or model file that is missing, malformed or unreadable."""


class IntegrityError(BundleError):
    """A model file whose bytes do not match the sha256 recorded for it."""


class DeviceError(GraftError):
    """A requested execution device that is not available here."""


class ExportError(GraftError):
    """An export that could not be produced."""


class CheckFailed(GraftError):
    """A check that ran and failed: parity or a verification budget."""

    exit_code = 1


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
