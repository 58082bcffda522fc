"""'Did you mean ...?' for a misspelt name: config keys, enumeration values and flag choices."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(given: object, allowed: Iterable[object], prefix: str = "") -> str:
    """``" (did you mean 'PREFIXnear'?)"`` for the entry of ``allowed`` nearest to ``given``, or "" when
    none is near (difflib's similarity ratio of at least 0.6); ``prefix`` goes before it (a key's section)."""
    near = difflib.get_close_matches(str(given), [str(name) for name in allowed], n=1)
    return f" (did you mean {prefix + near[0]!r}?)" if near else ""
