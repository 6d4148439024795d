"""Text from outside the process made safe to be an id or a label value: one spelling per id, valid
UTF-8 for every label (a bad one breaks the whole scrape)."""

from __future__ import annotations

import unicodedata

from otel_tokens import names

# invisible characters that make one person two ids: zero-width space/joiners, word joiner, BOM, soft hyphen
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e"))


def normalize_id(value: str) -> str:
    """One spelling per id: Unicode NFKC (fullwidth `ａｌｉｃｅ` is `alice`, compatibility forms folded) with
    invisible characters removed. ASCII is already normal. Look-alikes from other scripts (a Cyrillic `а`)
    stay distinct: telling them from real names in that script is a policy, not a normalization."""
    if value.isascii():
        return value
    return unicodedata.normalize("NFKC", value).translate(_INVISIBLE)


def valid_text(value: str) -> str:
    """`value` as valid UTF-8: a lone surrogate (from a server's JSON `\\ud800`, or a caller's string)
    written as its \\udXXX escape. One such label value makes the Prometheus exporter answer 500 for
    every scrape of the process, so every value that becomes a label goes through here."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("utf-8")


def safe_value(value: str) -> str:
    """Valid UTF-8 text in one spelling, whatever came in: NFKC with invisible characters removed
    (`normalize_id`, the same for every source: the app, a proxy's header under any server, baggage),
    lone surrogates written as \\udXXX escapes; a real id spelled like one of our own principals
    (`__unattributed__`, `__other__`) gets a leading backslash, so no one can pose as, or be merged into,
    those."""
    value = normalize_id(value)
    if value.endswith("__") and value.lstrip("\\") in names.RESERVED_IDS:  # one more backslash: one-to-one
        return "\\" + value
    return valid_text(value)
