"""Printing untrusted text (file names, locators, reasons, LLM rationales, error messages)
to a terminal: never as Rich markup, never with the control sequences it may carry.

A file may be named `q[/x]bad.png` (Rich markup: an error, or parts of the name vanish) or
hold `ESC]0;…` / `ESC[2J` (it would retitle or clear the reader's terminal).
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.markup import escape

# ANSI escape sequences (CSI, OSC, other ESC forms), then any C0/C1 control character except
# newline and tab.
_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(value: object) -> str:
    """The text without terminal control sequences or control characters."""
    return _CONTROL.sub("", _SEQUENCE.sub("", str(value)))


def safe(value: object) -> str:
    """Clean text, escaped for an f-string that also carries Rich markup of our own."""
    return escape(clean(value))


class PlainConsole(Console):
    """A console that prints text as is (no markup) and cleans every string it is given,
    table cells included."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(markup=False, highlight=False, **kwargs)

    def print(self, *objects: Any, **kwargs: Any) -> None:
        from rich.table import Table

        for item in objects:
            if isinstance(item, Table):
                for column in item.columns:
                    column._cells = [clean(c) if isinstance(c, str) else c for c in column._cells]
        super().print(*(clean(o) if isinstance(o, str) else o for o in objects), **kwargs)
