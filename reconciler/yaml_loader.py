"""Safe YAML for documents written by hand: plain data only, bounded, with a line for every field.

PyYAML's own constructors are not used: they would build shared objects for aliases (so a
"billion laughs" file looks small until something walks it) and they forget where each value
came from. Instead the parser's event stream (libyaml where available) is turned directly into
dicts, lists and scalars, counting every node an alias expands to, bounding the depth, refusing
every tag that would build an object, refusing duplicate keys, and recording each field's line.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from reconciler.errors import DocumentError
from reconciler.limits import DEFAULT_LIMITS, Limits

FieldPath = tuple[str | int, ...]

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_STR = "tag:yaml.org,2002:str"
_SCALAR_TAGS = {
    _STR,
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    # Timestamps stay the text they were written as: documents carry them as strings.
    "tag:yaml.org,2002:timestamp",
}
_SEQ_TAGS = {None, "!", "tag:yaml.org,2002:seq"}
_MAP_TAGS = {None, "!", "tag:yaml.org,2002:map"}
_MERGE = "tag:yaml.org,2002:merge"
_PLAIN = "plain YAML: mappings, lists, strings, numbers, booleans and null"


@dataclass(frozen=True)
class Loaded:
    """A parsed document and the line of every field in it (1-based)."""

    data: Any
    lines: dict[FieldPath, int] = field(repr=False)

    def line_of(self, path: Sequence[str | int]) -> int:
        """The line of a field, or of its nearest ancestor the text shows (values under aliases)."""
        key = tuple(path)
        while key:
            line = self.lines.get(key)
            if line is not None:
                return line
            key = key[:-1]
        return self.lines.get((), 1)


def load_yaml(data: bytes, file: str, limits: Limits = DEFAULT_LIMITS) -> Loaded:
    """Parse one YAML document; raise `DocumentError` naming the file and line of any problem."""
    if len(data) > limits.max_yaml_bytes:
        raise DocumentError(
            file, 1, f"file is {len(data)} bytes, expected at most {limits.max_yaml_bytes}"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DocumentError(
            file, line, f"not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start})"
        ) from None
    loader = _Loader(text)
    try:
        return _Builder(loader, file, limits).document()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        what = exc.problem or exc.context or "unreadable"
        raise DocumentError(file, line, f"malformed YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise DocumentError(file, 1, f"malformed YAML: {exc}") from None
    finally:
        loader.dispose()


def load_json(data: bytes, file: str, limits: Limits = DEFAULT_LIMITS) -> Loaded:
    """Parse a JSON document (trust/root.json) under the same limits, refusing duplicate keys.

    JSON is parsed as JSON, since escapes such as surrogate pairs are not YAML 1.1; the
    lines come from reading the same text as YAML when that succeeds, else line 1.
    """
    if len(data) > limits.max_yaml_bytes:
        raise DocumentError(
            file, 1, f"file is {len(data)} bytes, expected at most {limits.max_yaml_bytes}"
        )

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key '{key}', expected each key once")
            out[key] = value
        return out

    try:
        value = json.loads(data, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as exc:
        raise DocumentError(file, exc.lineno, f"malformed JSON: {exc.msg}") from None
    except (ValueError, RecursionError) as exc:
        raise DocumentError(file, 1, f"malformed JSON: {exc}") from None
    try:
        lines = load_yaml(data, file, limits).lines
    except DocumentError:
        lines = {(): 1}
    return Loaded(value, lines)


class _Builder:
    def __init__(self, loader: Any, file: str, limits: Limits) -> None:
        self.loader = loader
        self.file = file
        self.limits = limits
        self.lines: dict[FieldPath, int] = {(): 1}
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.expanded = 0
        self.scalars = yaml.constructor.SafeConstructor()

    def fail(self, event: Any, message: str) -> DocumentError:
        return DocumentError(self.file, _line(event), message)

    def document(self) -> Loaded:
        self.loader.get_event()  # stream start
        if self.loader.check_event(yaml.StreamEndEvent):
            raise DocumentError(self.file, 1, "empty file, expected one YAML document")
        self.loader.get_event()  # document start
        self.lines[()] = _line(self.loader.peek_event())
        data, _ = self.node((), 0)
        self.loader.get_event()  # document end
        if not self.loader.check_event(yaml.StreamEndEvent):
            raise self.fail(
                self.loader.peek_event(), "a second YAML document, expected one per file"
            )
        return Loaded(data, self.lines)

    def count(self, event: Any, nodes: int) -> None:
        self.expanded += nodes
        if self.expanded > self.limits.max_yaml_nodes:
            raise self.fail(
                event,
                f"document expands to more than {self.limits.max_yaml_nodes} nodes"
                " (aliases repeating aliases: a 'billion laughs' file?), expected a plain"
                " document",
            )

    def node(self, path: FieldPath, depth: int) -> tuple[Any, int]:
        event: Any = self.loader.get_event()
        if isinstance(event, yaml.AliasEvent):
            anchored = self.anchors.get(event.anchor or "")
            if anchored is None:
                raise self.fail(event, f"alias *{event.anchor} names no anchor before it")
            self.count(event, anchored[1])
            # Each use gets its own copy, so that merging one never changes another.
            return copy.deepcopy(anchored[0]), anchored[1]
        if depth > self.limits.max_yaml_depth:
            raise self.fail(
                event, f"nesting deeper than {self.limits.max_yaml_depth} levels, expected less"
            )
        if isinstance(event, yaml.ScalarEvent):
            value: Any = self.scalar(event)
            size = 1
            self.count(event, 1)
        elif isinstance(event, yaml.SequenceStartEvent):
            value, size = self.sequence(event, path, depth)
        elif isinstance(event, yaml.MappingStartEvent):
            value, size = self.mapping(event, path, depth)
        else:  # pragma: no cover - the parser emits nothing else here
            raise self.fail(event, f"unexpected {type(event).__name__}")
        if event.anchor is not None:
            self.anchors[event.anchor] = (value, size)
        return value, size

    def scalar(self, event: Any) -> Any:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag == _STR:
            return event.value
        if tag == _MERGE:
            raise self.fail(
                event,
                "merge key '<<' is not supported, expected the keys written out"
                " (or shared settings in a group)",
            )
        if tag not in _SCALAR_TAGS:
            raise self.fail(event, f"tag {tag} is not allowed, expected {_PLAIN}")
        if tag.endswith(":timestamp"):
            return event.value
        node = yaml.ScalarNode(tag, event.value)
        return self.scalars.yaml_constructors[tag](self.scalars, node)

    def sequence(self, event: Any, path: FieldPath, depth: int) -> tuple[list[Any], int]:
        if event.tag not in _SEQ_TAGS:
            raise self.fail(event, f"tag {event.tag} is not allowed, expected {_PLAIN}")
        items: list[Any] = []
        size = 1
        self.count(event, 1)
        while not self.loader.check_event(yaml.SequenceEndEvent):
            child = (*path, len(items))
            self.lines[child] = _line(self.loader.peek_event())
            value, child_size = self.node(child, depth + 1)
            items.append(value)
            size += child_size
        self.loader.get_event()
        return items, size

    def mapping(self, event: Any, path: FieldPath, depth: int) -> tuple[dict[str, Any], int]:
        if event.tag not in _MAP_TAGS:
            raise self.fail(event, f"tag {event.tag} is not allowed, expected {_PLAIN}")
        mapping: dict[str, Any] = {}
        size = 1
        self.count(event, 1)
        while not self.loader.check_event(yaml.MappingEndEvent):
            key_event: Any = self.loader.get_event()
            if not isinstance(key_event, yaml.ScalarEvent):
                raise self.fail(key_event, "a mapping key that is not a scalar, expected a string")
            key = self.scalar(key_event)
            if not isinstance(key, str):
                shown = "null" if key is None else repr(key).lower()
                raise self.fail(
                    key_event,
                    f"mapping key {key_event.value!r} reads as {shown}, expected a string"
                    " (quote it)",
                )
            child = (*path, key)
            line = _line(key_event)
            if key in mapping:
                raise self.fail(
                    key_event,
                    f"duplicate key '{key}' (first at line {self.lines[child]}), expected each"
                    " key once",
                )
            self.lines[child] = line
            value, child_size = self.node(child, depth + 1)
            mapping[key] = value
            size += child_size
        self.loader.get_event()
        return mapping, size


def _line(event: Any) -> int:
    mark = event.start_mark
    return int(mark.line) + 1 if mark is not None else 1
