"""Mistakes in what a user gave eta, told apart from bugs.

A `UserError` message says what was wrong and what would be right; the `eta` CLI prints it as one
line and exits with `exit_code` (1: the data, 2: how eta was called), where a bug shows its traceback.
Both are ValueErrors, so code that already caught ValueError for bad input still does.
"""

from __future__ import annotations


class UserError(ValueError):
    """The data given cannot be used: a bad or empty file, too few orders, no production model yet."""

    exit_code = 1


class UsageError(UserError):
    """An argument names something that does not exist or is malformed: a namespace, a model tag, a date."""

    exit_code = 2
