"""Credentials for the repos Kiln reads RPM metadata and SRPMs from.

A URL's userinfo (``https://user:secret@host/``) never lands in a recipe, a written recipe,
``build.json`` or the ledger: ``kiln validate`` refuses it in a recipe, and the recipes Kiln writes
drop it. A repo that needs a login gets it from site.yaml, as mirrors do: a URL there that carries
credentials (``SiteConfig.login_urls``: ``rpm_repo_credentials`` and the mirror and repo URLs) lends
them to every URL with the same scheme, host and port whose path lies below its own (the longest
such path wins). Pure: the fetching code (source.py) asks ``RepoLogins.for_url`` for the URL to
request and name in every message, and the ``(user, password)`` to send with it.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..host.http import Auth

# scheme://userinfo@ : the userinfo runs to the last '@' before the path, as URL parsers read a
# password with an '@' in it (builder/masking.py reads it the same way).
_USERINFO = re.compile(r"(?i)^([a-z][a-z0-9+.-]*://)([^/?#]*)@")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def has_userinfo(url: str) -> bool:
    return _USERINFO.match(url) is not None


def without_userinfo(url: str) -> str:
    """``url`` with its userinfo removed (unchanged when it has none)."""
    return _USERINFO.sub(r"\1", url, count=1)


def split_userinfo(url: str) -> tuple[str, Auth | None]:
    """(``url`` without userinfo, its (user, password) percent-decoded, or None)."""
    found = _USERINFO.match(url)
    if found is None:
        return url, None
    user, _, password = found.group(2).partition(":")
    return without_userinfo(url), (unquote(user), unquote(password))


def _origin_and_path(url: str) -> tuple[tuple[str, str, int | None], str] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number, a broken IPv6 literal
        return None
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port), path


def credentials_for(url: str, site_credentials: Iterable[str]) -> tuple[str, Auth | None]:
    """The URL to request (never with userinfo) and the login to send with it: the URL's own
    userinfo when it has one (a command-line URL), else that of the URL in ``site_credentials`` with
    the same origin whose path is the longest prefix of this one's; None when none matches."""
    bare, own = split_userinfo(url)
    if own is not None:
        return bare, own
    wanted = _origin_and_path(bare)
    if wanted is None:
        return bare, None
    best: tuple[int, Auth] | None = None
    for candidate in site_credentials:
        candidate_bare, auth = split_userinfo(candidate)
        where = _origin_and_path(candidate_bare)
        if auth is None or where is None or where[0] != wanted[0] or not wanted[1].startswith(where[1]):
            continue
        if best is None or len(where[1]) > best[0]:
            best = (len(where[1]), auth)
    return bare, best[1] if best else None


def login_secrets(urls: Iterable[str]) -> list[str]:
    """What of the logins in ``urls`` must never be printed: each password (a token's user, in
    ``https://token@host``) as written and percent-decoded, and ``user:password`` in base64 (the
    Authorization header's form)."""
    secrets: list[str] = []
    for url in urls:
        found = _USERINFO.match(url)
        if found is None:
            continue
        written_user, _, written_password = found.group(2).partition(":")
        user, password = unquote(written_user), unquote(written_password)
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        secrets += [written_password or written_user, password or user, basic]
    return secrets


@dataclass(frozen=True)
class RepoLogins:
    """The logins site.yaml lends to repo URLs: its URLs that carry userinfo (``SiteConfig.login_urls``).
    Empty: no login but a URL's own."""

    site_urls: tuple[str, ...] = ()

    def for_url(self, url: str) -> tuple[str, Auth | None]:
        """The URL to request and to name (never with userinfo), and the login to send with it."""
        return credentials_for(url, self.site_urls)


NO_LOGINS = RepoLogins()
