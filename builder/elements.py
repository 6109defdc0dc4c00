"""The DIB element names a recipe may use: Kiln's own (``elements/``), diskimage-builder's and
ironic-python-agent-builder's. ``kiln validate`` refuses any other name before a build starts,
naming the closest real ones (a renamed or misspelled element otherwise fails minutes into DIB)."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path


def _element_dirs() -> list[Path]:
    dirs = []
    try:
        import diskimage_builder

        dirs.append(Path(diskimage_builder.__file__).parent / "elements")
    except ImportError:
        pass
    try:
        from ironic_python_agent_builder import find_elements_path

        dirs.append(Path(find_elements_path()))
    except (ImportError, SystemExit, OSError, ValueError):
        pass
    return dirs


@lru_cache(maxsize=8)
def known_elements(elements_dir: str) -> frozenset[str]:
    """Every element name found in the workspace's elements/ and the installed tools' element dirs
    (empty when none of those tools is installed: then nothing is refused)."""
    names: set[str] = set()
    for directory in [Path(elements_dir), *_element_dirs()]:
        if directory.is_dir():
            names.update(p.name for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    return frozenset(names)


def unknown_element(name: str, known: frozenset[str]) -> str | None:
    """Why ``name`` is refused (with the closest known names), or None when it exists."""
    if not known or name in known:
        return None
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    hint = f"; closest: {', '.join(close)}" if close else ""
    return (
        f"unknown DIB element {name!r} (not in elements/, diskimage-builder or "
        f"ironic-python-agent-builder){hint}"
    )
