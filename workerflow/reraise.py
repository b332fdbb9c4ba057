"""Clean up, then re-raise the original exception — without losing either error.

Use inside an ``except`` block::

    try:
        connection.publish(message)
    except Exception:
        with cleanup_then_reraise():
            connection.release()

When the body finishes, the exception being handled is re-raised unchanged. When the cleanup itself
raises, the *original* exception is still the one that propagates (it is what the caller needs to
handle), and the cleanup error is kept rather than lost: it is logged with its traceback, added to
the original's ``__notes__`` as a short line, and attached as ``original.cleanup_errors`` (a list,
one entry per failed cleanup) so code can inspect it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["cleanup_then_reraise"]

logger = logging.getLogger(__name__)


@contextmanager
def cleanup_then_reraise() -> Iterator[BaseException]:
    """Run the ``with`` body as cleanup, then re-raise the exception currently being handled.

    Yields that exception. A failing cleanup does not replace it: see the module docstring.
    """
    original = sys.exc_info()[1]
    if original is None:
        raise RuntimeError("cleanup_then_reraise() must be used inside an except block")
    context, suppress_context = original.__context__, original.__suppress_context__
    cleanup_error: BaseException | None = None
    try:
        yield original
    except BaseException as error:
        cleanup_error = error
    if cleanup_error is not None:
        logger.error(
            "cleanup after %s: %s failed; re-raising the original error",
            type(original).__name__,
            original,
            exc_info=cleanup_error,
        )
        original.add_note(
            f"while cleaning up after this error, another one occurred: "
            f"{type(cleanup_error).__name__}: {cleanup_error}"
        )
        errors: list[BaseException] = getattr(original, "cleanup_errors", [])
        errors.append(cleanup_error)
        original.cleanup_errors = errors  # type: ignore[attr-defined]
    try:
        raise original
    finally:
        # Raising here would chain the cleanup error as the original's __context__; the original
        # keeps its own chain (the cleanup error is in the note, the log and cleanup_errors).
        original.__context__ = context
        original.__suppress_context__ = suppress_context
