"""Database URLs in messages and logs: :func:`describe_url` hides the password.

Below both :mod:`flashkit.db` (which re-exports it) and :mod:`flashkit._pool` (whose health
check names the database), so neither imports the other for it.
"""

from __future__ import annotations

import re
from typing import Final

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from flashkit.errors import redact

__all__ = ["describe_url"]

_PASSWORD: Final = re.compile(r"(://[^:/@]*:)[^@]*@")


def describe_url(url: str | URL) -> str:
    """The URL with its password hidden (for messages and logs)."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD.sub(r"\1***@", redact(str(url)))
