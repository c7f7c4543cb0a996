"""``yaml.safe_load`` whose every failure is a ``yaml.YAMLError`` with a position.

PyYAML's safe constructors raise plain Python errors for scalars that parse but do not convert:
``2024-13-45`` (ValueError: month must be in 1..12), ``!!int abc``, ``!!bool maybe`` (KeyError),
``!!timestamp x`` (AttributeError), an integer of more than 4300 digits (ValueError: Python's limit on
``int()``). ``safe_load`` finds the scalar that fails and raises a ``MarkedYAMLError`` at its line and
column instead, so that every reader reports it as the syntax errors it already reports.
"""
from __future__ import annotations

from typing import Any

import yaml

from cvtrain.errors import shown

CONVERSION_ERRORS = (ValueError, TypeError, KeyError, AttributeError, OverflowError)


def safe_load(text: str) -> Any:
    """``yaml.safe_load(text)``; a scalar that cannot be converted raises ``yaml.MarkedYAMLError`` naming it.

    >>> try:
    ...     safe_load("date: 2024-13-45")
    ... except yaml.MarkedYAMLError as error:
    ...     print(error.problem, "at line", error.problem_mark.line + 1)
    '2024-13-45' is not a valid timestamp (month must be in 1..12) at line 1
    """
    try:
        return yaml.safe_load(text)
    except CONVERSION_ERRORS as error:
        node, reason = _failing_scalar(text), _reason(error)
        if node is None:  # not found (it should always be): the error without a position
            raise yaml.YAMLError(reason) from None
        kind = node.tag.rsplit(":", 1)[-1]
        raise yaml.MarkedYAMLError(problem=f"{shown(node.value)} is not a valid {kind} ({reason})",
                                   problem_mark=node.start_mark) from None


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    if "integer string conversion" in text:  # "Exceeds the limit (4300 digits) ... use sys.set_int_max_str_digits()"
        return "more than 4300 digits"
    if isinstance(error, (KeyError, AttributeError)) or text.startswith(("invalid literal", "could not convert")):
        return "not in its format"  # !!int abc, !!bool maybe, !!timestamp x
    return text


def _failing_scalar(text: str) -> yaml.ScalarNode | None:
    """The first scalar node of ``text`` (composed, not constructed) whose construction raises."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        stack = [root] if root is not None else []
        seen: set[int] = set()
        while stack:
            node = stack.pop()
            if id(node) in seen:  # aliases may point back up (&a [*a])
                continue
            seen.add(id(node))
            if isinstance(node, yaml.ScalarNode):
                try:
                    loader.construct_object(node, deep=True)
                except CONVERSION_ERRORS:
                    return node
                except yaml.YAMLError:
                    continue
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(reversed(node.value))
            elif isinstance(node, yaml.MappingNode):
                stack.extend(part for pair in reversed(node.value) for part in reversed(pair))
        return None
    finally:
        loader.dispose()
