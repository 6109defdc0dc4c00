"""Shared fixtures: a throwaway workspace with Kiln's templates and elements, and a recipe writer."""

from __future__ import annotations

import shutil
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from builder.workspace import PACKAGE_ROOT, Workspace

REPO = PACKAGE_ROOT


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """A fresh workspace: the repository's templates/ and elements/, an empty recipes/."""
    root = tmp_path / "ws"
    root.mkdir()
    shutil.copytree(REPO / "templates", root / "templates")
    shutil.copytree(REPO / "elements", root / "elements")
    (root / "recipes").mkdir()
    return Workspace(root)


@pytest.fixture
def write(workspace: Workspace) -> Callable[[str, str], Path]:
    """write("recipes/x.yaml", text) -> the path; text is dedented."""

    def _write(relative: str, text: str) -> Path:
        path = workspace.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        return path

    return _write
