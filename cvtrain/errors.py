"""Errors meant for users: one line saying what, where and how to fix it.

The CLI prints these without a traceback and exits with ``exit_code``;
anything else that escapes is a bug and keeps its traceback.
"""
from __future__ import annotations

import reprlib
from decimal import Decimal
from typing import Any


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


class _Shown(reprlib.Repr):
    """``repr`` cut to a readable size: a few items per list and dict, three levels, long strings elided."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 3, 6, 6, 4, 6
        self.maxstring = self.maxother = 60

    def repr_int(self, value: int, level: int) -> str:
        """In full up to 20 digits (any 64-bit id), else like a float: ``1e+400``, ``-1.23457e+19``."""
        if -10**20 < value < 10**20:
            return repr(value)
        return format(Decimal(value).normalize(), ".6g")  # Decimal: no str() of a 5000-digit int (Python refuses it)

    def repr_bool(self, value: bool, level: int) -> str:
        """``true``/``false``, as JSON and YAML write them."""
        return "true" if value else "false"

    def repr_NoneType(self, value: None, level: int) -> str:  # noqa: N802 - reprlib's naming: repr_<type name>
        """``null``, as JSON and YAML write it."""
        return "null"


_SHOWN = _Shown()


def shown(value: Any) -> str:
    """A value from the user's file as a message quotes it: ``repr`` made short and printable.

    Huge numbers are abbreviated (``1e+400``, not 401 digits), long strings and deep or long lists elided
    (``[1, 2, 3, 4, 5, 6, ...]``); NUL bytes and lone surrogates are escaped as ``repr`` does.

    ``None``, ``True`` and ``False`` read as JSON and YAML write them (``null``, ``true``, ``false``).

    >>> shown(10**400), shown([0, 2**64, -(10**30), [1, 2, 3, 4, 5, 6, 7]]), shown([None, True])
    ('1e+400', '[0, 18446744073709551616, -1e+30, [1, 2, 3, 4, 5, 6, ...]]', '[null, true]')
    """
    return _SHOWN.repr(value)


def kind_of(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words, for messages: ``an object``, ``an array``, ``null``.

    >>> kind_of({}), kind_of([]), kind_of("x"), kind_of(1.5), kind_of(True), kind_of(None)
    ('an object', 'an array', 'a string', 'a number', 'a boolean', 'null')
    """
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else f"a {type(value).__name__}")


def name_problem(text: str) -> str | None:
    """Why ``text`` cannot name a file, or None: a NUL byte, or a lone surrogate (``"\\ud800"`` in JSON), which no
    file system can encode. The one test behind the path guard, the readers and ``data.root``.

    >>> name_problem("a.png"), name_problem("a\\x00.png"), name_problem("a\\ud800.png")
    (None, 'holds a NUL byte', 'is not valid Unicode (it holds a lone surrogate)')
    """
    if "\x00" in text:
        return "holds a NUL byte"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid Unicode (it holds a lone surrogate)"
    return None


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
