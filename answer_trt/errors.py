"""Errors a user can fix by changing their command or call."""

from __future__ import annotations


class UserInputError(ValueError):
    """A request the engine refuses; the message says what to change.

    The CLI prints the message on one line and exits with code 2.
    """


class NonFiniteImageError(RuntimeError):
    """The decoder produced NaN or inf: writing the image would give a black picture."""


# C0 controls, DEL and C1 controls: a terminal acts on them (ESC and CSI start escape
# sequences; CR and BS overwrite what was shown).
_CONTROL = {code: f"\\x{code:02x}" for code in (*range(0x00, 0x20), *range(0x7F, 0xA0))}
_CONTROL.update({ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"})


def printable(text: str) -> str:
    """``text`` safe to show on a terminal in one line: control characters (C0, DEL, C1)
    written as Python escapes (``\\x1b``, ``\\n``), everything else as it is. For messages
    that may carry text from a file, a PNG or a client."""
    return str(text).translate(_CONTROL)
