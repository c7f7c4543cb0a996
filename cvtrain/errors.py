"""Errors meant for users: one line saying what, where and how to fix it.

The CLI prints these without a traceback and exits with ``exit_code``;
anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations


class CvtrainError(Exception):
    """A mistake in the user's input (spec, data, checkpoint, flags)."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``where: what (hint)``: what the CLI prints after ``error:``."""
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f" ({self.hint})"
        return text


class ConfigError(CvtrainError):
    """A spec or override that does not fit the schema."""


class DataError(CvtrainError):
    """A dataset that cannot be read."""


class CheckpointError(CvtrainError):
    """A checkpoint that cannot be loaded for this spec."""


class DivergenceError(CvtrainError):
    """Training produced a non-finite loss, gradient or weight."""

    exit_code = 3


class RunInterrupted(Exception):
    """A run stopped by a signal (Ctrl-C, SIGTERM, SIGUSR1); not an error of the user's.

    ``line`` is the one line to print (where it stopped, the checkpoint, the command that continues it),
    ``exit_code`` 128 + the signal's number, ``quiet`` True in the processes that print nothing (ranks other than 0).
    """

    def __init__(self, line: str, *, exit_code: int, checkpoint=None, quiet: bool = False):
        super().__init__(line)
        self.line = line
        self.exit_code = exit_code
        self.checkpoint = checkpoint
        self.quiet = quiet
