"""The registry of kinds: the only code that looks a kind up by its name.

To add a kind: write ``builder/kinds/<kind>.py`` creating a :class:`~builder.kinds.base.Kind` (its
recipe models, capability rules, rendered outputs, backend, verifier and publish route), its
templates under ``templates/`` and an example recipe under ``recipes/``, and list it in ``BUILTIN``
below. Tests may :func:`register` a kind of their own.

A recipe's ``kind:`` names a kind; where several builders share a name (guest images: ``dib`` and
``packer``), ``build.builder`` picks one, and the recipe model's ``build`` is a union over them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, create_model

from ..core.kind import Kind
from ..core.route import answers
from ..recipe import RecipeBase
from . import container, guest_dib, guest_packer, ipa, rpm

BUILTIN: tuple[Kind, ...] = (guest_dib.KIND, guest_packer.KIND, ipa.KIND, rpm.KIND, container.KIND)

_kinds: dict[tuple[str, str | None], Kind] = {}
_models: dict[str, type[RecipeBase]] = {}
_names: tuple[str, ...] = ()


def register(kind: Kind) -> None:
    """Add a kind (replacing one with the same name and builder). Its route, if it publishes, must
    say what its destination holds (``core.route.answers``): runners that share nothing ask it."""
    if kind.route is not None and not answers(kind.route):
        raise ValueError(
            f"kind {kind.name!r}: route {kind.route.name!r} must name its destination and answer "
            "published_at (what its destination holds): a route that cannot is not registered"
        )
    others = [k for k in _kinds.values() if k.name == kind.name and k.key != kind.key]
    for other in others:
        shared = (other.verify_model, other.publish_model, other.route, other.facts)
        if shared != (kind.verify_model, kind.publish_model, kind.route, kind.facts):
            raise ValueError(
                f"builders of kind {kind.name!r} must share its verify/publish models, route and facts"
            )
        if (other.builder is None) != (kind.builder is None):
            raise ValueError(f"kind {kind.name!r}: every builder needs a name, or there is only one")
    _kinds[kind.key] = kind
    _changed(kind.name)


def unregister(name: str, builder: str | None = None) -> None:
    _kinds.pop((name, builder), None)
    _changed(name)


def _changed(name: str) -> None:
    global _names
    _models.pop(name, None)
    _names = tuple(dict.fromkeys(k.name for k in _kinds.values()))


for _kind in BUILTIN:
    register(_kind)


def names() -> tuple[str, ...]:
    """Every recipe ``kind:`` value, in registration order."""
    return _names


def all_kinds() -> Iterator[Kind]:
    return iter(tuple(_kinds.values()))


def builders(name: str) -> list[Kind]:
    return [k for k in _kinds.values() if k.name == name]


def kind_of(name: str, build: BaseModel | Mapping[str, Any] | None = None) -> Kind:
    """The kind for a recipe kind name and its build settings (a model, or a manifest's dict)."""
    candidates = builders(name)
    if not candidates:
        raise KeyError(f"unknown kind {name!r} (known: {', '.join(names())})")
    if len(candidates) == 1 and candidates[0].builder is None:
        return candidates[0]
    chosen = build.get("builder") if isinstance(build, Mapping) else getattr(build, "builder", None)
    for kind in candidates:
        if kind.builder == chosen:
            return kind
    raise KeyError(
        f"kind {name!r} has no builder {chosen!r} (known: {', '.join(str(k.builder) for k in candidates)})"
    )


def publishing_of(name: str) -> Kind:
    """Any builder of kind ``name``: they share the publish model, route and facts (``register`` checks)."""
    candidates = builders(name)
    if not candidates:
        raise KeyError(f"unknown kind {name!r} (known: {', '.join(names())})")
    return candidates[0]


def recipe_model(name: str) -> type[RecipeBase]:
    """The pydantic model of a whole recipe of kind ``name`` (made once per name)."""
    model = _models.get(name)
    if model is None:
        model = _models[name] = _make_recipe_model(name)
    return model


def _make_recipe_model(name: str) -> type[RecipeBase]:
    members = builders(name)
    if not members:
        raise KeyError(name)
    first = members[0]
    build: Any = first.build_model
    if len(members) > 1:  # a union tagged by build.builder: errors name the chosen builder's keys
        union: Any = first.build_model
        for k in members[1:]:
            union = union | k.build_model
        build = Annotated[union, Field(discriminator="builder")]
    title = "".join(part.title() for part in name.split("-")) + "Recipe"
    return create_model(
        title,
        __base__=RecipeBase,
        __doc__="; or ".join(k.description for k in members if k.description) or None,
        kind=(Literal[name], ...),  # type: ignore[valid-type]
        build=(build, ...),
        verify=(first.verify_model, Field(default_factory=first.verify_model)),
        publish=(first.publish_model, Field(default_factory=first.publish_model)),
    )


def recipe_json_schema() -> dict[str, Any]:
    """The JSON Schema editors use for completion (``kiln schema``): one recipe of any kind."""

    models = [recipe_model(name) for name in names()]
    union: Any = models[0]
    for model in models[1:]:
        union = union | model
    schema = TypeAdapter(Annotated[union, Field(discriminator="kind")]).json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Kiln recipe"
    # "extends" is resolved before validation, so the models do not know it; editors should.
    for definition in schema.get("$defs", {}).values():
        if definition.get("title", "").endswith("Recipe"):
            definition["properties"]["extends"] = {
                "type": "string",
                "description": "A base recipe file (relative path) whose keys this recipe overrides.",
            }
    return schema
