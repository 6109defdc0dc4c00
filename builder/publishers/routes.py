"""The built-in publish routes, one per destination; a kind names one of these objects.

To add a destination: write its client and a :class:`~builder.publishers.route.Route` subclass
beside it in ``builder/publishers/``, add the instance to :data:`BUILTIN`, and let the kinds that
publish there name it (``Kind.route``). A test may define a route of its own and a kind that names
it: nothing else needs to know (tests/unit/test_toy_route.py).
"""

from __future__ import annotations

from ..core.route import Route
from .glance import GLANCE
from .http_dir import IPA
from .registry import REGISTRY
from .repo import REPO

BUILTIN: tuple[Route, ...] = (GLANCE, REPO, REGISTRY, IPA)
