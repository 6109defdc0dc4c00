"""One planned command: argv, the environment Kiln adds, cwd and time-outs, as a backend plans it and
the runner (builder/host/run.py) runs it; printable (``kiln build --dry-run``) with secrets masked."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..masking import MASK, SECRET_KEY, mask


@dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # added to the environment Kiln runs in
    cwd: Path | None = None
    timeout_s: float | None = None
    kill_grace_s: float = 10.0

    def environment(self, inherited: Mapping[str, str]) -> dict[str, str]:
        """The whole environment the command runs with: ``inherited`` (the one Kiln runs in) with the
        command's own over it, as the runner composes it (builder/host/run.py)."""
        return dict(sorted({**inherited, **self.env}.items()))

    def as_json(self, inherited: Mapping[str, str] | None = None) -> dict[str, Any]:
        """argv, cwd and the whole environment (secrets masked); ``env_set_by_kiln``: the names Kiln
        sets (the rest comes from the environment Kiln was started in)."""
        return {
            "argv": list(self.argv),
            "env": masked_environment(self.environment(inherited or {})),
            "env_set_by_kiln": sorted(self.env),
            "cwd": str(self.cwd or ""),
        }


def masked_environment(env: Mapping[str, str]) -> dict[str, str]:
    """``env`` fit to print: a variable named like a secret (``OS_PASSWORD``, ``CI_JOB_TOKEN``) shows
    ``***`` whatever its length, and every value passes the masking layer (URL credentials, secrets
    registered from site.yaml and the environment)."""
    return {name: MASK if SECRET_KEY.search(name) else mask(value) for name, value in env.items()}
