"""Errors a user can fix by changing their command or call."""

from __future__ import annotations


class UserInputError(ValueError):
    """A request the engine refuses; the message says what to change.

    The CLI prints the message on one line and exits with code 2.
    """


class NonFiniteImageError(RuntimeError):
    """The decoder produced NaN or inf: writing the image would give a black picture."""
