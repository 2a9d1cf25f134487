"""Every exception the worker's decoding and the commands raise on purpose, in one module.

The store's are in db/errors.py (db/ may not import worker/), the Lambda's in chalicelib/errors.py.
Callers choose by class: a `FieldError` makes the event a reject, a `HelperDied` makes the worker
decode inline, a `SetupError` is exit 1 naming SQS's reason.
"""

from __future__ import annotations


class FieldError(ValueError):
    """A value that must be exact (money, counts, keys) cannot be stored exactly."""


class HelperDied(RuntimeError):
    """The decoding helper process exited or broke its pipe."""


class SetupError(RuntimeError):
    """SQS refused a call; the message names the call and SQS's reason."""
