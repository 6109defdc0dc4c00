"""YAML loading that remembers where every key came from, and refuses hostile documents.

PyYAML's ``safe_load`` forgets line numbers, silently keeps the last of two duplicate keys and
expands aliases without limit (the "billion laughs" document). Kiln composes the node graph
(linear in the size of the text, aliases stay shared) and builds plain data itself, counting every
node it produces so that an alias bomb is refused after a bounded amount of work.
"""

from __future__ import annotations

import os
import stat
from collections import ChainMap
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
import yaml.constructor

from .errors import InvalidInput, KeyPath, Location, Problem
from .limits import MAX_DEPTH, MAX_FILE_BYTES, MAX_NODES
from .workspace import relative_text

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_scalar_constructor = yaml.constructor.SafeConstructor()
_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# Scalar tags a recipe may use (implicitly or written out); their values are checked by PyYAML's
# safe constructors. Everything else (!!binary, !!python/..., custom !tags) is refused: recipes are
# text, and binary values would slip past the template-syntax check as bytes.
_SCALAR_TAGS = {f"tag:yaml.org,2002:{name}": name for name in ("int", "float", "bool", "null", "timestamp")}

_Resolvers = tuple[tuple[str, Any], ...]  # (tag, regexp) pairs, tried in order


def _implicit_resolvers(loader: type[yaml.BaseResolver]) -> tuple[dict[str, _Resolvers], _Resolvers]:
    """The loader's implicit resolvers by first character, wildcard ones appended, as tuples."""
    resolvers = loader.yaml_implicit_resolvers
    wildcard = tuple(resolvers.get(None, ()))
    return {k: (*v, *wildcard) for k, v in resolvers.items() if k is not None}, wildcard


class _ComposeLoader(_Loader):  # type: ignore[misc,valid-type]
    """``_Loader`` with a quicker ``resolve``, for composing: libyaml calls back into Python's
    ``BaseResolver.resolve`` for every node, which concatenates two resolver lists per scalar.
    Same tags for every node; the plain PyYAML behaviour is kept where path resolvers are set."""

    _by_first, _wildcard = _implicit_resolvers(_Loader)

    def resolve(self, kind: type[yaml.Node], value: Any, implicit: tuple[bool, bool]) -> str:
        if self.yaml_path_resolvers:
            return super().resolve(kind, value, implicit)
        if kind is yaml.ScalarNode:
            if implicit[0]:
                # value[:1] is "" for the empty string, the key BaseResolver uses for it too.
                for tag, regexp in self._by_first.get(value[:1], self._wildcard):
                    if regexp.match(value):
                        return tag
            return self.DEFAULT_SCALAR_TAG
        if kind is yaml.SequenceNode:
            return self.DEFAULT_SEQUENCE_TAG
        return self.DEFAULT_MAPPING_TAG


class LocatedDoc:
    """Plain data (dicts, lists, scalars) plus the location of every key path in it.

    Locations are only needed when something is wrong, so they are computed on first use
    (``locations``) rather than while loading: a valid recipe never pays for them.
    """

    __slots__ = ("_compute", "_locations", "data", "file", "may_have_template_syntax")

    def __init__(
        self,
        data: Any,
        locations: Mapping[KeyPath, Location] | None = None,
        file: str = "<string>",
        *,
        compute: Callable[[], Mapping[KeyPath, Location]] | None = None,
        may_have_template_syntax: bool = True,
    ):
        self.data = data
        self.file = file
        self._locations = locations
        self._compute = compute
        # False only when the source text cannot contain "{{", "{%" or "{#" in any value.
        self.may_have_template_syntax = may_have_template_syntax

    @property
    def locations(self) -> Mapping[KeyPath, Location]:
        if self._locations is None:
            self._locations = self._compute() if self._compute is not None else {}
        return self._locations

    def locations_source(self) -> Callable[[], Mapping[KeyPath, Location]]:
        """What gives ``locations``, without keeping this document (and so its data) alive."""
        if self._locations is not None or self._compute is None:
            locations = self.locations
            return lambda: locations
        return self._compute

    def without_data(self) -> LocatedDoc:
        """The same locations, without the data (``None``): for documents kept only to place later
        problems, whose data lives on in what was built from it (a loaded recipe's model)."""
        return LocatedDoc(
            None,
            file=self.file,
            compute=self.locations_source(),
            may_have_template_syntax=self.may_have_template_syntax,
        )

    def locate(self, path: KeyPath) -> Location | None:
        """The location of ``path``, or of its nearest ancestor that has one."""
        locations = self.locations
        for end in range(len(path), -1, -1):
            loc = locations.get(tuple(path[:end]))
            if loc is not None:
                return loc
        return None

    def problem(self, path: KeyPath, message: str) -> Problem:
        return Problem(message, self.locate(path), tuple(path))


@lru_cache(maxsize=8)
def _resolved_cwd(cwd: str) -> Path:
    return Path(cwd).resolve()


def display_path(path: Path, *, resolved: bool = False) -> str:
    """A path as a user should see it: relative to the working directory when below it.
    ``resolved``: the caller already resolved it (realpath costs a stat per component)."""
    try:
        return relative_text(path if resolved else path.resolve(), _resolved_cwd(os.getcwd()))
    except ValueError:
        return str(path)


def read_limited(path: Path, shown: str) -> bytes:
    """The bytes of a regular file of at most MAX_FILE_BYTES, checked before reading: a device
    (``/dev/zero``), a FIFO (opened without blocking, so nothing waits for a writer) or a
    directory is refused at once, and a file that grows while read is cut at the limit."""
    where = Location(shown, 1, 1)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidInput(Problem(f"cannot read: {reason}", where)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "a directory" if stat.S_ISDIR(info.st_mode) else "a device, FIFO or socket"
            raise InvalidInput(Problem(f"not a regular file ({what}); refused", where))
        if info.st_size > MAX_FILE_BYTES:
            raise InvalidInput(Problem(f"file is larger than {MAX_FILE_BYTES} bytes", where))
        with os.fdopen(fd, "rb", closefd=False) as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise InvalidInput(Problem(f"cannot read: {exc.strerror or exc}", where)) from None
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput(Problem(f"file is larger than {MAX_FILE_BYTES} bytes", where))
    return raw


def load_file(path: Path, *, resolved: bool = False) -> LocatedDoc:
    try:
        shown = display_path(path, resolved=resolved)
    except (OSError, RuntimeError):  # a symlink loop or an over-long name: refused by the read below
        shown = str(path)
    raw = read_limited(path, shown)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(Problem(f"not UTF-8 text ({exc.reason})", Location(shown, 1, 1))) from exc
    return load_text(text, shown)


def _too_deep(text: str) -> yaml.Mark | None:
    """Where nesting first passes MAX_DEPTH, found from parser events, before composing.

    libyaml's composer recurses per level and crashes the process on tens of thousands of nested
    flow collections (``[[[[...``), which fit easily under MAX_FILE_BYTES. Block nesting needs
    indentation, so only text with many brackets can get that deep: others skip the extra pass.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                return event.start_mark
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
    return None


def load_text(text: str, file: str = "<string>") -> LocatedDoc:
    try:
        mark = _too_deep(text)
        if mark is not None:
            where = Location(file, mark.line + 1, mark.column + 1)
            raise InvalidInput(Problem(f"nesting deeper than {MAX_DEPTH} levels; refused", where))
        node = yaml.compose(text, Loader=_ComposeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        loc = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise InvalidInput(Problem(f"YAML syntax error: {exc.problem or exc}", loc)) from exc
    except yaml.reader.ReaderError as exc:
        raise InvalidInput(_reader_problem(exc, text, file)) from None
    except yaml.YAMLError as exc:
        raise InvalidInput(Problem(f"YAML error: {exc}", Location(file, 1, 1))) from exc
    # Backslashes could spell "{{" as escapes; any of these makes the value-by-value check run.
    suspicious = any(marker in text for marker in ("{{", "{%", "{#", "\\"))
    if node is None:
        return LocatedDoc({}, {(): Location(file, 1, 1)}, file, may_have_template_syntax=False)
    data = _Builder(file).build(node, (), 0)
    del node  # not kept for the lazy locations below: see there

    def locations() -> dict[KeyPath, Location]:
        # Composed again from the text rather than kept: a recipe's node graph (nodes, two marks
        # each, key/value tuples) is ~200 objects the cyclic GC would scan on every collection
        # for as long as the recipe is loaded, and locations are only needed for an error.
        recorder = _Builder(file, record=True)
        recorder.build(yaml.compose(text, Loader=_ComposeLoader), (), 0)
        return recorder.locations

    return LocatedDoc(data, file=file, compute=locations, may_have_template_syntax=suspicious)


def _reader_problem(exc: yaml.reader.ReaderError, text: str, file: str) -> Problem:
    """A character YAML does not allow (a control character), at its own line and column.
    libyaml gives the position as a byte offset into the UTF-8 text."""
    before = text.encode("utf-8", "surrogatepass")[: max(exc.position, 0)].decode("utf-8", "ignore")
    line = before.count("\n") + 1
    column = len(before) - (before.rfind("\n") + 1) + 1
    char = exc.character
    if isinstance(char, int) and (char < 0x20 or 0x7F <= char < 0xA0):
        message = (
            f"control character U+{char:04X} is not allowed in YAML text; if it is meant, write it "
            f'as an escape ("\\x{char:02x}") in a double-quoted string'
        )
    else:
        what = f"U+{char:04X}" if isinstance(char, int) else repr(char)
        message = f"character {what} is not allowed in YAML ({exc.reason})"
    return Problem(message, Location(file, line, column))


class _Builder:
    """Builds plain data from a node graph, counting nodes (alias bombs) and depth. With ``record``,
    it also notes the location of every key path (done again, lazily, only when an error needs it)."""

    def __init__(self, file: str, record: bool = False):
        self.file = file
        self.record = record
        self.locations: dict[KeyPath, Location] = {(): Location(file, 1, 1)}
        self.count = 0
        self._open: set[int] = set()  # ids of the collections being built (cycles through aliases)

    def _tick(self, node: yaml.Node, path: KeyPath) -> None:
        """Count one unit of work (a node built, a key looked at) against MAX_NODES."""
        self.count += 1
        if self.count > MAX_NODES:
            raise self._refuse(
                node, path, f"document expands to more than {MAX_NODES} nodes (an alias bomb?); refused"
            )

    def _loc(self, node: yaml.Node) -> Location:
        return Location(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def _refuse(self, node: yaml.Node, path: KeyPath, message: str) -> InvalidInput:
        return InvalidInput(Problem(message, self._loc(node), path))

    def build(self, node: yaml.Node, path: KeyPath, depth: int) -> Any:
        self._tick(node, path)
        if depth > MAX_DEPTH:
            raise self._refuse(node, path, f"nesting deeper than {MAX_DEPTH} levels; refused")
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if not isinstance(node, yaml.SequenceNode | yaml.MappingNode):
            raise self._refuse(node, path, f"unsupported YAML node {type(node).__name__}")
        if id(node) in self._open:
            raise self._refuse(node, path, "an alias refers to a collection that contains it; refused")
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, path, depth)
            items = []
            for index, item in enumerate(node.value):
                if self.record:
                    self.locations[(*path, index)] = self._loc(item)
                value = self._plain_str(item, depth)
                items.append(value if value is not None else self.build(item, (*path, index), depth + 1))
            return items
        finally:
            self._open.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: KeyPath) -> Any:
        if node.tag == _STR_TAG:
            return node.value
        name = _SCALAR_TAGS.get(node.tag)
        if name is None:
            shown = node.tag.replace("tag:yaml.org,2002:", "!!")
            if shown == "!!merge":
                raise self._refuse(node, path, "unsupported YAML value: '<<' is a merge key, not a value")
            raise self._refuse(node, path, f"unsupported YAML value: the tag {shown} is not accepted")
        try:
            return _scalar_constructor.construct_object(node, deep=True)
        except Exception:  # PyYAML raises ValueError, KeyError, AttributeError...
            # ... for a tag on text it does not fit (!!int abc), or an int too long to convert.
            raise self._refuse(
                node, path, f"unsupported YAML value: {_short_text(node.value)} is not a valid !!{name}"
            ) from None
        finally:
            _scalar_constructor.constructed_objects.clear()

    def _plain_str(self, node: yaml.Node, parent_depth: int) -> str | None:
        """A string scalar's value, counted as ``build`` counts it, without the call and the key
        path ``build`` needs (most nodes are strings); None for anything else, or when a limit is
        near, so that ``build`` does the work and raises the same errors."""
        if (
            node.__class__ is yaml.ScalarNode
            and node.tag == _STR_TAG
            and self.count < MAX_NODES
            and parent_depth < MAX_DEPTH
        ):
            self.count += 1
            return node.value
        return None

    def _mapping(
        self, node: yaml.MappingNode, path: KeyPath, depth: int, skip: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """Build a mapping; keys in ``skip`` (already set by the mapping that merges this one) are
        not built at all, so they neither cost work nor overwrite the explicit keys' locations."""
        result: dict[str, Any] = {}
        merged_from: list[yaml.Node] = []
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                is_list = isinstance(value_node, yaml.SequenceNode)
                for source in value_node.value if is_list else [value_node]:
                    # A mapping listed twice adds nothing the second time (its keys are all set).
                    if not any(source is seen for seen in merged_from):
                        merged_from.append(source)
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise self._refuse(key_node, path, "mapping keys must be plain strings")
            key = key_node.value
            if key in result:
                raise self._refuse(key_node, (*path, key), "duplicate key (the first one would be ignored)")
            if key in skip:
                # Not built, but looked at: merges of merges that only repeat keys still cost work,
                # and a few hundred bytes of them would otherwise run for minutes.
                self._tick(key_node, path)
                continue
            if self.record:
                self.locations[(*path, key)] = self._loc(key_node)
            value = self._plain_str(value_node, depth)
            result[key] = value if value is not None else self.build(value_node, (*path, key), depth + 1)
        # YAML merge keys ("<<: *defaults"): explicit keys win, then the first merged mapping.
        if not merged_from:
            return result
        for source in merged_from:
            self._tick(source, path)
            if not isinstance(source, yaml.MappingNode):
                raise self._refuse(source, path, "'<<' must merge a mapping or a list of mappings")
            if id(source) in self._open:
                raise self._refuse(source, path, "a mapping merges itself ('<<' of an enclosing anchor)")
            if depth + 1 > MAX_DEPTH:
                raise self._refuse(source, path, f"merges nested deeper than {MAX_DEPTH} levels; refused")
            self._open.add(id(source))
            try:
                result.update(self._mapping(source, path, depth + 1, skip=skip | frozenset(result)))
            finally:
                self._open.discard(id(source))
        return result


def _short_text(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:37]) + "..."


def deep_merge(base: LocatedDoc, override: LocatedDoc) -> LocatedDoc:
    """Merge ``override`` over ``base``: mappings merge key by key; lists and scalars replace.

    Each key path of the result keeps the location of the document its value came from, so that an
    error in an inherited default points into the defaults file. A path present in the merged data
    is in ``override`` if override set it, else it came from ``base``: a ChainMap says exactly that.
    The result does not keep ``override`` itself: the mappings of its data that were merged into new
    ones would stay alive for nothing (``base`` is a shared defaults section or ``extends`` base).
    """
    override_locations = override.locations_source()
    return LocatedDoc(
        merge_values(base.data, override.data),
        file=override.file,
        compute=lambda: ChainMap(override_locations(), base.locations),  # type: ignore[arg-type]
        may_have_template_syntax=base.may_have_template_syntax or override.may_have_template_syntax,
    )


def merge_values(base: Any, override: Any) -> Any:
    """Mappings merged key by key (override wins), anything else replaced: plain data only."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge_values(base[key], value) if key in base else value
        return out
    return override


def subdoc(doc: LocatedDoc, prefix: KeyPath) -> LocatedDoc:
    """The part of ``doc`` below ``prefix``, with its locations re-rooted."""
    value: Any = doc.data
    for part in prefix:
        value = value[part]
    n = len(prefix)

    def locations() -> dict[KeyPath, Location]:
        return {path[n:]: loc for path, loc in doc.locations.items() if path[:n] == prefix}

    return LocatedDoc(
        value, file=doc.file, compute=locations, may_have_template_syntax=doc.may_have_template_syntax
    )


def without_key(doc: LocatedDoc, key: str) -> LocatedDoc:
    """``doc`` (a mapping) minus one top-level key and its locations."""

    def locations() -> dict[KeyPath, Location]:
        return {path: loc for path, loc in doc.locations.items() if path[:1] != (key,)}

    return LocatedDoc(
        {k: v for k, v in doc.data.items() if k != key},
        file=doc.file,
        compute=locations,
        may_have_template_syntax=doc.may_have_template_syntax,
    )
