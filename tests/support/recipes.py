"""Recipe texts and types shared by the recipe tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

Write = Callable[[str, str], Path]  # the `write` fixture: (relative path, text) -> path

MINIMAL_GUEST = """\
name: g
kind: guest-image
arches: [x86_64]
build:
  builder: dib
  distro: debian
  release: bookworm
"""
