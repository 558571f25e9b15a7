"""Kubernetes objects read from files, as `kubectl get -o yaml|json` writes them.

Two layers:
- `load_documents` parses a file into raw objects, each with a source ("x.yaml item 12
  (line 340)") that later messages can point at. A file that cannot be parsed raises
  `InputError` naming the file and line: nothing of it is used.
- `read_cluster` converts the objects of several files into model values. An object that
  cannot be programmed is logged once and skipped; the others are kept.

Large inputs are the norm (a cluster dump with 10,000 Services), so YAML goes through
libyaml's CSafeLoader when PyYAML was built with it, and JSON through the json module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, cast

import yaml
from loguru import logger

from ipvsproxy.core.gcpause import gc_paused
from ipvsproxy.core.model import EndpointSlice, Node, Service
from ipvsproxy.errors import InputError, InvalidObject
from ipvsproxy.k8s.objects import (
    endpoint_slice_from_dict,
    node_from_dict,
    service_from_dict,
)

__all__ = ["Cluster", "LoadedObject", "load_documents", "read_cluster"]

_Loader: type[yaml.SafeLoader] | type[yaml.CSafeLoader] = getattr(
    yaml, "CSafeLoader", yaml.SafeLoader
)


@dataclass(frozen=True, slots=True)
class LoadedObject:
    """One Kubernetes object of a file, with where it came from.

    obj is the parsed object as the file holds it; treat it as read-only.
    """

    source: str
    obj: Mapping[str, object]

    @property
    def kind(self) -> str:
        kind = self.obj["kind"]
        assert isinstance(kind, str)  # checked by load_documents
        return kind


@dataclass(frozen=True, slots=True)
class Cluster:
    """The objects of a cluster that matter to the proxy, read from files.

    skipped holds the objects that could not be converted, already logged.
    """

    services: tuple[Service, ...] = ()
    slices: tuple[EndpointSlice, ...] = ()
    nodes: tuple[Node, ...] = ()
    skipped: tuple[InvalidObject, ...] = ()


# --- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Document:
    number: int  # 1-based, counting empty documents too, as they appear in the file
    line: int | None  # 1-based line where it starts; None for JSON
    value: object
    item_lines: Mapping[int, int]  # index in `items` -> 1-based line (YAML only)


def load_documents(path: str | os.PathLike[str]) -> list[LoadedObject]:
    """The Kubernetes objects of a YAML or JSON file, with List objects expanded.

    Accepts single or multi-document YAML, a JSON object, and Lists (`kind: List` or
    `ServiceList`-style, whose items may lack `kind` as the raw API returns them).
    Empty documents are ignored.

    Raises InputError naming the file and the line or document at fault when the file
    cannot be read or parsed, when a document or List item is not a mapping, or when an
    object has no kind.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise InputError(f"{name}: cannot read: {exc.strerror or exc}") from exc

    with gc_paused():
        if _looks_like_json(name, data):
            documents = _json_documents(name, data)
        else:
            documents = _yaml_documents(name, data)

    single = sum(1 for document in documents if document.value is not None) <= 1
    objects: list[LoadedObject] = []
    for document in documents:
        if document.value is None:
            continue
        label = name if single else f"{name} document {document.number}"
        source = _with_line(label, document.line)
        obj = _as_object(document.value, source)
        kind = obj["kind"]
        assert isinstance(kind, str)
        if kind == "List" or (kind.endswith("List") and "items" in obj):
            objects.extend(_list_items(obj, kind, label, document.item_lines))
        else:
            objects.append(LoadedObject(source=source, obj=obj))
    return objects


def _looks_like_json(name: str, data: bytes) -> bool:
    if name.endswith(".json"):
        return True
    start = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    return start[:1] in (b"{", b"[")


def _json_documents(name: str, data: bytes) -> list[_Document]:
    try:
        value = json.loads(data)
    except json.JSONDecodeError as exc:
        if not name.endswith(".json"):
            # YAML flow style ("{kind: List}") starts like JSON; let YAML have a go.
            return _yaml_documents(name, data)
        raise InputError(
            f"{name}: line {exc.lineno} column {exc.colno}: invalid JSON: {exc.msg}"
        ) from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{name}: not UTF-8 text: {exc}") from exc
    return [_Document(number=1, line=None, value=value, item_lines={})]


def _yaml_documents(name: str, data: bytes) -> list[_Document]:
    try:
        try:
            return _EventBuilder(name, data).documents()
        except _Unsupported:
            return list(_node_documents(name, data))
    except yaml.YAMLError as exc:
        raise InputError(_yaml_error(name, exc)) from exc
    except ValueError as exc:  # a value PyYAML resolved but cannot build (2024-02-30)
        raise InputError(f"{name}: invalid YAML value: {exc}") from exc


class _Unsupported(Exception):
    """YAML the event builder leaves to PyYAML's own constructor (anchors, tags, merges)."""


_STR_TAG: Final = "tag:yaml.org,2002:str"


class _EventBuilder:
    """Builds plain Python values straight from libyaml's parse events.

    PyYAML's loader first composes a tree of Node objects, then constructs values from it.
    On a 10,000-Service dump that tree costs most of the time, much of it in the cyclic
    garbage collector walking millions of young Node and Mark objects. Events are freed
    as soon as they are used, so building from them is about 8 times faster. Scalars are
    resolved and constructed exactly as SafeLoader does; anything rarer in kubectl output
    (anchors, aliases, explicit tags, merge keys, non-scalar keys) raises _Unsupported
    and the file is loaded again the ordinary way.
    """

    def __init__(self, name: str, data: bytes) -> None:
        self._name = name
        self._loader = _Loader(data)
        # Typed views of untyped or loosely typed PyYAML methods. get_event returns None
        # only after StreamEndEvent, which documents() never reads past.
        self._next = cast(Callable[[], yaml.Event], self._loader.get_event)
        self._resolve = cast(
            Callable[[type[yaml.Node], str, tuple[bool, bool]], str], self._loader.resolve
        )
        self._resolved: dict[str, object] = {}

    def documents(self) -> list[_Document]:
        loader = self._loader
        documents: list[_Document] = []
        try:
            self._next()  # StreamStartEvent
            while not loader.check_event(yaml.StreamEndEvent):
                self._next()  # DocumentStartEvent
                event = self._next()
                item_lines: dict[int, int] = {}
                value = self._document(event, item_lines)
                self._next()  # DocumentEndEvent
                documents.append(
                    _Document(
                        number=len(documents) + 1,
                        line=_line(event),
                        value=value,
                        item_lines=item_lines,
                    )
                )
        finally:
            loader.dispose()
        return documents

    def _document(self, event: yaml.Event, item_lines: dict[int, int]) -> object:
        """A document's value; for a mapping, item_lines gets the lines of its `items`."""
        if type(event) is not yaml.MappingStartEvent:
            return self._value(event)
        self._check_collection(event)
        mapping: dict[object, object] = {}
        while type(key := self._next()) is not yaml.MappingEndEvent:
            name = self._key(key)
            value = self._next()
            if name == "items" and type(value) is yaml.SequenceStartEvent:
                self._check_collection(value)
                items: list[object] = []
                while type(item := self._next()) is not yaml.SequenceEndEvent:
                    item_lines[len(items)] = _line(item)
                    items.append(self._value(item))
                mapping[name] = items
            else:
                mapping[name] = self._value(value)
        return mapping

    def _value(self, event: yaml.Event) -> object:
        """The value that starts with event (the hot path: keep it lean)."""
        kind = type(event)
        if kind is yaml.ScalarEvent:
            return self._scalar(cast(yaml.ScalarEvent, event))
        self._check_collection(event)
        next_event = self._next
        if kind is yaml.MappingStartEvent:
            mapping: dict[object, object] = {}
            while type(key := next_event()) is not yaml.MappingEndEvent:
                mapping[self._key(key)] = self._value(next_event())
            return mapping
        sequence: list[object] = []
        while type(item := next_event()) is not yaml.SequenceEndEvent:
            sequence.append(self._value(item))
        return sequence

    @staticmethod
    def _check_collection(event: yaml.Event) -> None:
        # An alias has an anchor too; explicit tags such as !!set or !!omap need PyYAML.
        if not isinstance(event, yaml.CollectionStartEvent):
            raise _Unsupported
        if event.anchor is not None or (event.tag is not None and event.tag != "!"):
            raise _Unsupported

    def _key(self, event: yaml.Event) -> object:
        if type(event) is not yaml.ScalarEvent:
            raise _Unsupported  # a collection as a key
        if event.value == "<<" and event.implicit[0]:
            raise _Unsupported  # a merge key
        return self._scalar(event)

    def _scalar(self, event: yaml.ScalarEvent) -> object:
        if event.anchor is not None or (event.tag is not None and event.tag != "!"):
            raise _Unsupported
        text = event.value
        if not event.implicit[0]:  # quoted, or the non-specific tag "!": a string
            return text
        try:
            return self._resolved[text]
        except KeyError:
            pass
        tag = self._resolve(yaml.ScalarNode, text, (True, False))
        if tag == _STR_TAG:
            value: object = text
        else:
            construct = self._loader.yaml_constructors.get(tag)
            if construct is None:  # a plain "<<" (the merge tag) anywhere but as a key
                raise _Unsupported
            try:
                value = construct(self._loader, yaml.ScalarNode(tag, text))
            except ValueError as exc:  # e.g. a plain 2024-02-30 read as a timestamp
                where = f"{self._name}: line {_line(event)}"
                raise InputError(f"{where}: invalid value {text!r}: {exc}") from exc
        self._resolved[text] = value
        return value


def _line(event: yaml.Event) -> int:
    mark = event.start_mark
    return 0 if mark is None else mark.line + 1


def _node_documents(name: str, data: bytes) -> Iterator[_Document]:
    # What yaml.load_all does, keeping each document's node for its line numbers.
    loader = _Loader(data)
    try:
        number = 0
        while loader.check_node():
            node = loader.get_node()
            number += 1
            if node is None:  # pragma: no cover - check_node said there is one
                break
            value = loader.construct_document(node)
            yield _Document(
                number=number,
                line=node.start_mark.line + 1,
                value=value,
                item_lines=_item_lines(node),
            )
    finally:
        loader.dispose()


def _yaml_error(name: str, exc: yaml.YAMLError) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = exc.problem or "syntax error"
        if exc.context:
            problem = f"{problem} ({exc.context})"
        return f"{name}: line {mark.line + 1} column {mark.column + 1}: invalid YAML: {problem}"
    return f"{name}: invalid YAML: {exc}"


def _item_lines(node: yaml.Node) -> dict[int, int]:
    if not isinstance(node, yaml.MappingNode):
        return {}
    for key, value in node.value:
        if key.value == "items" and isinstance(value, yaml.SequenceNode):
            return {index: item.start_mark.line + 1 for index, item in enumerate(value.value)}
    return {}


def _with_line(label: str, line: int | None) -> str:
    return label if line is None else f"{label} (line {line})"


def _describe(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def _as_object(value: object, source: str) -> Mapping[str, object]:
    if not isinstance(value, dict):
        got = _describe(value)
        raise InputError(f"{source}: expected a Kubernetes object (a mapping), got {got}")
    kind = value.get("kind")
    if not isinstance(kind, str) or not kind:
        raise InputError(f"{source}: object has no kind")
    return value


def _list_items(
    obj: Mapping[str, object], kind: str, label: str, item_lines: Mapping[int, int]
) -> Iterator[LoadedObject]:
    items = obj.get("items")
    if items is None:
        return
    if not isinstance(items, list):
        raise InputError(f"{label}: {kind} items: expected a list, got {_describe(items)}")
    # The raw API (kubectl get --raw) leaves kind out of the items of a typed List.
    item_kind = kind.removesuffix("List") if kind != "List" else None
    for index, item in enumerate(items):
        source = _with_line(f"{label} item {index + 1}", item_lines.get(index))
        if item_kind is not None and isinstance(item, dict) and "kind" not in item:
            item = {**item, "kind": item_kind}
        yield LoadedObject(source=source, obj=_as_object(item, source))


# --- conversion ----------------------------------------------------------------------------

_Value = Service | EndpointSlice | Node | None
_CONVERTERS: Final[Mapping[str, Callable[[Mapping[str, object]], _Value]]] = {
    "Service": service_from_dict,
    "EndpointSlice": endpoint_slice_from_dict,
    "Node": node_from_dict,
}
_NAMESPACED: Final = frozenset({"Service", "EndpointSlice"})


def read_cluster(paths: Sequence[str | os.PathLike[str]]) -> Cluster:
    """The Services, EndpointSlices and Nodes of the given files, converted.

    An invalid object is logged once as a warning and listed in `skipped`; Services and
    slices kube-proxy ignores on purpose (headless, ExternalName, FQDN) are left out
    silently. Other kinds are ignored, among them v1 Endpoints: kube-proxy reads slices.
    When an object appears twice (same kind, namespace and name), the later one wins,
    even when it is invalid or ignored. Objects keep the order they first appeared in.

    Raises InputError when a file cannot be read or parsed.
    """
    builder = _ClusterBuilder()
    with gc_paused():
        for path in paths:
            for loaded in load_documents(path):
                builder.add(loaded)
    return builder.build()


class _ClusterBuilder:
    """Converts objects one by one; keyed by (kind, namespace/name), later ones win."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str], _Value] = {}
        self._sources: dict[tuple[str, str], str] = {}
        self._skipped: list[InvalidObject] = []

    def add(self, loaded: LoadedObject) -> None:
        kind = loaded.kind
        convert = _CONVERTERS.get(kind)
        if convert is None:
            logger.debug("ignoring {kind} at {source}", kind=kind, source=loaded.source)
            return
        identity = _identity(kind, loaded.obj)
        if identity is not None and identity in self._sources:
            logger.warning(
                "duplicate {kind} {key} at {source} replaces the one at {previous}",
                kind=kind,
                key=identity[1],
                source=loaded.source,
                previous=self._sources[identity],
            )
        try:
            value = convert(loaded.obj)
        except InvalidObject as exc:
            logger.warning(
                "skipping invalid {kind} {key} at {source}: {reason}",
                kind=exc.kind,
                key=exc.key,
                source=loaded.source,
                reason=exc.reason,
            )
            self._skipped.append(exc)
            value = None
        # Without a usable name the converter has raised: identity is None only then.
        if identity is not None:
            self._sources[identity] = loaded.source
            self._values[identity] = value

    def build(self) -> Cluster:
        values = list(self._values.values())
        return Cluster(
            services=tuple(v for v in values if isinstance(v, Service)),
            slices=tuple(v for v in values if isinstance(v, EndpointSlice)),
            nodes=tuple(v for v in values if isinstance(v, Node)),
            skipped=tuple(self._skipped),
        )


def _identity(kind: str, obj: Mapping[str, object]) -> tuple[str, str] | None:
    """(kind, "namespace/name" or "name"), or None when the object has no usable name."""
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return None
    name = metadata.get("name")
    if not isinstance(name, str) or not name:
        return None
    if kind not in _NAMESPACED:
        return kind, name
    namespace = metadata.get("namespace")
    if not isinstance(namespace, str) or not namespace:
        namespace = "default"
    return kind, f"{namespace}/{name}"
