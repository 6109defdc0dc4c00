"""The one masking layer: what Kiln prints or logs never shows a credential.

Masked everywhere (CLI output on stdout and stderr, error messages, dry-run command lines, build
logs through the runner):

- the userinfo of any URL (``https://user:secret@host`` -> ``https://***@host``), and bare
  ``user:secret@host``;
- the values of environment variables named like secrets (``OS_PASSWORD``, ``CI_JOB_TOKEN``,
  ``AWS_SECRET_ACCESS_KEY``, ``REGISTRY_PASSWORD``...), wherever they appear;
- values registered at run time (``register``): site.yaml values under keys named like secrets,
  credentials read from a docker config.
"""

from __future__ import annotations

import io
import os
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

MASK = "***"
# Credentials in a URL ("https://user:pass@host", "token@host"): the userinfo part. Greedy up to the
# last "@" before the host, as URL parsers read a password with an "@" in it.
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#'\"]+@")
_BARE_USERINFO = re.compile(r"(?<![\w.:/-])[\w.%~!$&*+,;=-]+:[^\s/?#'\"]*@(?=[\w.-])")
# Keys (site.yaml keys, environment variable names) whose values are secrets whatever they look like.
SECRET_KEY = re.compile(r"(?i)(pass(word|wd|phrase)?|secret|token|credential|api[_-]?key|private[_-]?key)")
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words


def mask_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``***``."""
    text = _URL_USERINFO.sub(lambda m: m.group(1) + MASK + "@", text)
    return _BARE_USERINFO.sub(MASK + "@", text)


class Masker:
    def __init__(self, secrets: Iterable[str] = ()):
        self._lock = threading.Lock()
        self._secrets: list[str] = []
        for secret in secrets:
            self.register(secret)

    def register(self, secret: str | None) -> None:
        if not secret or len(secret) < MIN_SECRET_LENGTH:
            return
        with self._lock:
            if secret not in self._secrets:
                self._secrets.append(secret)
                self._secrets.sort(key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return mask_urls(text)


def environment_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if environ is None else environ
    return [
        value for name, value in env.items() if SECRET_KEY.search(name) and len(value) >= MIN_SECRET_LENGTH
    ]


def secrets_in(data: Any, key: str = "") -> list[str]:
    """Values under keys named like secrets, anywhere in plain data (a site.yaml dump)."""
    if isinstance(data, Mapping):
        return [s for k, v in data.items() for s in secrets_in(v, str(k))]
    if isinstance(data, list | tuple):
        return [s for item in data for s in secrets_in(item, key)]
    if isinstance(data, str) and key and SECRET_KEY.search(key):
        return [data]
    return []


# The process-wide masker: the CLI's output streams and every Runner mask through it.
MASKER = Masker(environment_secrets())


def register(secret: str | None) -> None:
    MASKER.register(secret)


def mask(text: str) -> str:
    return MASKER.mask(text)


class MaskingStream(io.TextIOBase):
    """A text stream that masks what is written through it (line-buffered, so that a secret split
    over two writes is still seen whole)."""

    def __init__(self, inner: TextIO, masker: Masker = MASKER):
        self.inner = inner
        self.masker = masker
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        if "\n" in self._pending or "\r" in self._pending:
            cut = max(self._pending.rfind("\n"), self._pending.rfind("\r")) + 1
            self.inner.write(self.masker.mask(self._pending[:cut]))
            self._pending = self._pending[cut:]
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self.inner.write(self.masker.mask(self._pending))
            self._pending = ""
        self.inner.flush()

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")
