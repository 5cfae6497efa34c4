"""Untrusted text made safe to show: invisible and direction-changing characters made visible, length bounded.

Names, tasks and reasons come from bundles. A U+202E (right-to-left override) can make ``exe.gpj`` read as
``jpg.exe``, a NUL or ESC can corrupt what shows them, U+2066-2069 reorder text: every character of Unicode
categories Cc (controls), Cf (format, bidi included), Co/Cs (private, surrogates) and Zl/Zp (line and paragraph
separators) is shown as its ``\\uXXXX`` escape instead.
"""

from __future__ import annotations

import unicodedata

HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zl", "Zp"})


def _shown(char: str, keep_layout: bool) -> str:
    if (keep_layout and char in "\n\t") or unicodedata.category(char) not in HIDDEN_CATEGORIES:
        return char
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def visible(text: str, keep_layout: bool = True) -> str:
    """``text`` with every hidden character as its escape (newlines and tabs kept when ``keep_layout``)."""
    if text.isprintable():  # the common case: no control, format or separator character at all
        return text
    return "".join(_shown(c, keep_layout) for c in text)


def clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, ending with ``…`` when cut."""
    return text if len(text) <= limit else text[:max(limit - 1, 0)] + "…"


def label(value: object, limit: int = 60) -> str:
    """A one-line, visible, bounded label (for plots and table cells)."""
    return clip(visible("" if value is None else str(value), keep_layout=False), limit)
