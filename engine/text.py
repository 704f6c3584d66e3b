"""Text from outside (names, transcripts, file names) made safe to store, show and print.

    check_name("my-set", "dataset")        # raises DatasetError for control characters, non-UTF-8
    clean, changed = clean_text(value)     # NUL, terminal escapes, bidi overrides removed
    print(printable(anything))             # control characters shown as \\x1b, never sent raw
    storable(anything)                     # surrogates (not UTF-8) written out, as SQLite needs

A terminal escape (ESC [ ... m, ESC ] ... BEL) in a transcript or a name can recolour, retitle or
clear a terminal when echoed; a right-to-left override makes "evil\u202egnp.exe" read as
"evilexe.png". The standard library's ``unicodedata`` classifies the characters; the rules are
ours because no maintained library strips exactly these and nothing else (ZWJ/ZWNJ stay: they
are part of how Indic scripts and emoji are written).
"""

from __future__ import annotations

import re
import unicodedata

from engine.errors import DatasetError
from storage import safe_name as safe_name  # the file store's slugs, for callers above the engine

# Bidirectional embedding, override and isolate controls (the "Trojan Source" characters).
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# ESC followed by a CSI (ESC [ ... final byte) or an OSC (ESC ] ... BEL or ESC \) sequence.
_ESCAPE_SEQUENCE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b.?")


def _unsafe(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category in ("Cc", "Cs") or ch in BIDI_CONTROLS


def clean_text(text: str) -> tuple[str, bool]:
    """``text`` without terminal escape sequences, control characters or bidi controls (tabs
    and line breaks become spaces); and whether anything but whitespace was removed. Surrogates
    (bytes that were not UTF-8) are kept for the caller to report."""
    without_escapes = _ESCAPE_SEQUENCE.sub("", text)
    removed = without_escapes != text
    kept = []
    for ch in without_escapes:
        if ch in "\t\r\n":
            kept.append(" ")
        elif unicodedata.category(ch) == "Cs" or not _unsafe(ch):
            kept.append(ch)
        else:
            removed = True
    return "".join(kept), removed


def printable(text: str) -> str:
    """``text`` with every control character, bidi control and undecodable byte escaped
    (``\\x1b``, ``\\u202e``), line breaks and tabs kept: safe to print to a terminal or a log."""
    return "".join(_escape(ch) if ch not in "\n\t" and _unsafe(ch) else ch for ch in text)


def storable(text: str) -> str:
    """``text`` that SQLite can store as UTF-8: each surrogate (a byte that was not UTF-8, or a
    lone ``\\ud800`` from a JSON escape) written out as ``printable`` shows it, the rest as is."""
    return "".join(_escape(ch) if unicodedata.category(ch) == "Cs" else ch for ch in text)


def _escape(ch: str) -> str:
    if "\udc80" <= ch <= "\udcff":  # a byte that was not UTF-8, kept by surrogateescape
        return f"\\x{ord(ch) - 0xdc00:02x}"
    return ch.encode("unicode_escape", "backslashreplace").decode("ascii")


def check_name(name: str, what: str = "dataset", error: type[Exception] = DatasetError) -> str:
    """The stripped name, or ``error`` when it holds what no name may hold."""
    stripped = name.strip() if name else ""
    if not stripped:
        raise error(f"a {what} needs a name")
    if any(unicodedata.category(ch) == "Cs" for ch in stripped):
        raise error(f"the {what} name {printable(stripped)!r} holds bytes that are not UTF-8 text; "
                    "type the name again")
    if any(_unsafe(ch) for ch in stripped):
        raise error(f"the {what} name {printable(stripped)!r} holds control characters (terminal "
                    "escapes, line breaks or text-direction overrides); use letters, digits, spaces and - _ .")
    if len(stripped) > 200:
        raise error(f"a {what} name can be at most 200 characters; this one has {len(stripped)}")
    return stripped
