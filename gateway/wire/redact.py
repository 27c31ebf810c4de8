"""Credentials out of upstream messages: an upstream's error text is relayed to clients
and logs, and upstreams echo what they were sent ("Incorrect API key provided: SK-…"),
upper-cased, cut short or inside a URL. Runs on error paths only.

A word of the message (a run of key characters) is replaced by `***` when it holds any
eight consecutive characters of a secret the upstream was sent, in any case, or when it
looks like a credential whoever's it is: a provider's key prefix (`sk-`, `AIza`, `ghp_`,
…) or a long opaque run of letters and digits (32 or more, mixed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "***"
_WORD = re.compile(r"[A-Za-z0-9_\-+/.]+")
_OPAQUE = re.compile(r"[A-Za-z0-9_\-]{32,}")
_PREFIXES = ("sk-", "sk_", "pk_", "rk_", "gsk_", "ghp_", "gho_", "ghs_", "github_pat_",
             "hf_", "xai-", "xoxb-", "xoxp-", "aiza", "akia", "eyj")  # eyJ: a JWT
_WINDOW = 8  # shared characters that mark a word as (part of) a secret


def redact(message: str, secrets: Iterable[str | None]) -> str:
    lowered = [s.lower() for s in secrets if s and len(s) >= _WINDOW]
    return _WORD.sub(lambda m: MASK if _secret(m.group(0), lowered) else m.group(0),
                     message)


def _secret(word: str, secrets: list[str]) -> bool:
    lower = word.lower()
    if len(word) >= 16 and lower.startswith(_PREFIXES):
        return True
    for part in lower.split("/"):  # a path or a base64 run: judge the pieces
        if _OPAQUE.fullmatch(part.strip("._-+")) and _mixed(part):
            return True
    return any(secret[i:i + _WINDOW] in lower for secret in secrets
               for i in range(len(secret) - _WINDOW + 1))


def _mixed(part: str) -> bool:
    """Letters and digits both: a model or file name rarely runs 32 characters without
    a dot or slash and mixes both; keys and tokens do."""
    return any(c.isdigit() for c in part) and any(c.isalpha() for c in part)
