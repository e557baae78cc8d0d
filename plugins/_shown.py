"""Names from a file, made safe to quote in a one-line message.

A tensor key, storage record or module name is whatever bytes the file's author chose: a newline in one
would forge a second line of output, an escape sequence would rewrite the terminal. Every name a reader
puts into a :class:`ModelFormatError` goes through here: cut to a readable length, control and other
non-printable characters escaped the way `repr` does (``\\n``, ``\\x1b``, ``\\u202e``).
"""

from __future__ import annotations

#: Longest name shown; a megabyte-long key must not make a megabyte-long line.
SHOWN_CHARS = 80


def _cut(text: str) -> tuple[str, str]:
    return (text, "") if len(text) <= SHOWN_CHARS else (text[:SHOWN_CHARS], "...")


def quoted(text: str) -> str:
    """`text` in quotes with `repr` escapes, cut to `SHOWN_CHARS`: ``'a\\nb'``."""
    head, more = _cut(text)
    return repr(head) + more


def escaped(text: str) -> str:
    """`text` without quotes, non-printable characters escaped, cut to `SHOWN_CHARS`."""
    head, more = _cut(text)
    if head.isprintable():
        return head + more
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in head) + more
