"""Running a conversion the way its command line reports it: transformers' logging and progress bars silenced, and
any failure turned into one ``error: ...`` line with exit status 1."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def run_quietly(convert: Callable[..., Path], **kwargs) -> tuple[Path | None, str | None]:
    """``convert(**kwargs)`` with transformers quiet; returns (output, None) or (None, the error as one line)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # keep stderr to the one error line
    hf_logging.disable_progress_bar()
    try:
        return convert(**kwargs), None
    except Exception as error:  # noqa: BLE001 - a CLI reports every failure as one line, without a traceback
        return None, " ".join(str(error).split()) or type(error).__name__


def run_for_cli(convert: Callable[..., Path], done: str, **kwargs) -> tuple[int, str]:
    """(exit status, the line to report): ``(0, done + output)`` or ``(1, "error: ...")`` (for stderr)."""
    output, error = run_quietly(convert, **kwargs)
    return (1, f"error: {error}") if error is not None else (0, f"{done} {output}")


__all__ = ["run_for_cli", "run_quietly"]
