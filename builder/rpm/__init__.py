"""What the ``rpm-rebuild`` kind needs beyond its module: sources, trust, spec changes, build roots,
the BuildRequires table, the dependency order and ``kiln rpm missing``."""
