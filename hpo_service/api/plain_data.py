"""A request body as plain, JSON-shaped data (objects, arrays, strings, finite numbers, booleans, null), parsed
within bounds: whatever the body holds, parsing neither recurses deeply, nor expands aliases, nor builds more
than ``MAX_VALUES`` values, nor yields a value that the store or a JSON response could not hold.

A body that breaks a rule raises ``BodyError`` naming where (``loc``, the path of keys and indices to the
value), before anything is built from it where possible.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import yaml

MAX_DEPTH = 32  # a spec nests four levels deep
MAX_VALUES = 2_000  # a spec has about a hundred values (64 export targets: 256)
MAX_NUMBER_TEXT = 40  # characters of a number: more than any bound of a spec needs (2**128 has 39 digits)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's event parser, where installed
_YAML = "tag:yaml.org,2002:"
_YAML_SCALARS = {f"{_YAML}{kind}" for kind in ("str", "int", "float", "bool", "null")}
_YAML_COLLECTIONS = {f"{_YAML}seq", f"{_YAML}map", "!"}
_NESTING = np.zeros(256, np.int8)  # +1 for a byte that opens an array or object, -1 for one that closes it
_NESTING[list(b"[{")], _NESTING[list(b"]}")] = 1, -1
_STARTS_VALUE = np.zeros(256, bool)
_STARTS_VALUE[list(b",[{")] = True

Loc = tuple[str | int, ...]


class BodyError(ValueError):
    """A body that is not plain data within bounds; ``loc`` is where (empty: the body as a whole)."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc, self.message = loc, message


@dataclass(frozen=True)
class _Unrepresentable:
    """A JSON number that no field can take (NaN, ±Infinity, an overflowing float, a huge integer), kept in
    place by the parser so that the check can say where it was."""

    reason: str


def load_json(body: bytes) -> Any:
    """The JSON document in ``body`` (UTF-8, as RFC 8259 requires)."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise BodyError((), f"the body is not UTF-8 (byte {exc.start})") from None
    depth, values = _json_structure(body)
    if depth > MAX_DEPTH:
        raise BodyError((), f"the body nests deeper than {MAX_DEPTH} levels")
    if values > MAX_VALUES:
        raise BodyError((), f"the body holds more than {MAX_VALUES} values")
    try:
        data = json.loads(text, parse_constant=_json_constant, parse_float=_json_float, parse_int=_json_int)
    except ValueError as exc:
        raise BodyError((), f"malformed JSON: {exc}") from None
    check_plain(data)
    return data


def _json_structure(body: bytes) -> tuple[int, int]:
    """How deep a JSON text's arrays and objects nest, and how many values they hold at least (one per comma
    and per opening bracket), brackets and commas inside strings aside. A vectorised scan: the parser, which
    recurses and holds the interpreter while it builds, only ever sees a body within bounds."""
    codes = np.frombuffer(body, np.uint8)
    quotes = codes == ord('"')
    if b"\\" in body:  # a quote after an odd run of backslashes is escaped
        positions = np.arange(len(codes))
        last_other = np.maximum.accumulate(np.where(codes == ord("\\"), -1, positions))  # last non-backslash
        quotes[1:] &= (positions[:-1] - last_other[:-1]) % 2 == 0
    outside = np.cumsum(quotes) % 2 == 0  # a closing quote counts as outside, which is harmless
    steps = np.where(outside, _NESTING[codes], 0)
    depth = int(np.cumsum(steps, dtype=np.int64).max(initial=0))
    return depth, int(np.count_nonzero(outside & _STARTS_VALUE[codes]))


def _json_constant(name: str) -> _Unrepresentable:
    return _Unrepresentable(f"{name} is not a number JSON allows (nor one a field takes)")


def _json_float(text: str) -> float | _Unrepresentable:
    value = float(text)
    return value if math.isfinite(value) else _Unrepresentable(f"{text[:20]} overflows a 64-bit float")


def _json_int(text: str) -> int | _Unrepresentable:
    if len(text) > MAX_NUMBER_TEXT:
        return _Unrepresentable(f"a number written in {len(text)} characters is beyond any field's bounds")
    return int(text)


def load_yaml(body: bytes) -> Any:
    """The YAML document in ``body``, read as JSON-shaped data: built from the parser's events with neither
    recursion nor aliases (``&anchor``/``*alias`` are refused, so nothing expands), mapping keys taken as
    strings, and only the JSON kinds of scalar (an explicit tag such as ``!!binary`` or ``!!set`` is refused;
    a date stays a string, as in YAML 1.2's core schema)."""
    builder = _YamlBuilder()
    try:
        for event in yaml.parse(body, Loader=YAML_LOADER):
            builder.add(event)
    except yaml.YAMLError as exc:
        raise BodyError((), f"malformed YAML: {exc}".replace("\n", " ")) from None
    check_plain(builder.document)
    return builder.document


class _YamlBuilder:
    """Builds one document from parser events, holding the open collections on a stack."""

    def __init__(self) -> None:
        self.document: Any = None
        self.documents = 0
        self.values = 0
        self.open: list[tuple[dict | list, Loc]] = []  # the collections being filled, innermost last
        self.key: list[str | None] = []  # per open collection: the mapping key awaiting its value

    def add(self, event: yaml.Event) -> None:
        if isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise BodyError((), "the body holds more than one YAML document")
        elif isinstance(event, yaml.AliasEvent):
            raise BodyError(self._loc(), f"YAML aliases (*{event.anchor}) are not accepted: write the value out")
        elif isinstance(event, yaml.ScalarEvent | yaml.SequenceStartEvent | yaml.MappingStartEvent):
            self._node(event)
        elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
            self.open.pop()
            self.key.pop()

    def _node(self, event: yaml.NodeEvent) -> None:
        loc = self._loc()
        if event.anchor is not None:
            raise BodyError(loc, f"YAML anchors (&{event.anchor}) are not accepted: write the value out")
        self.values += 1
        if self.values > MAX_VALUES:
            raise BodyError((), f"the body holds more than {MAX_VALUES} values")
        if self.open and isinstance(self.open[-1][0], dict) and self.key[-1] is None:
            self._take_key(event, loc)
            return
        if isinstance(event, yaml.ScalarEvent):
            self._place(_yaml_scalar(event, loc))
            return
        if event.tag not in (None, *_YAML_COLLECTIONS):
            raise BodyError(loc, f"the YAML tag {_short_tag(event.tag)} is not accepted: a spec is plain data")
        if len(self.open) >= MAX_DEPTH:
            raise BodyError(loc, f"the body nests deeper than {MAX_DEPTH} levels")
        collection: dict | list = {} if isinstance(event, yaml.MappingStartEvent) else []
        self._place(collection)
        self.open.append((collection, loc))
        self.key.append(None)

    def _take_key(self, event: yaml.NodeEvent, loc: Loc) -> None:
        if not isinstance(event, yaml.ScalarEvent) or event.tag not in (None, "!", f"{_YAML}str"):
            raise BodyError(loc, "mapping keys must be plain strings")
        mapping = self.open[-1][0]
        if event.value in mapping:
            raise BodyError((*loc, event.value), f"the key {event.value!r} appears more than once")
        self.key[-1] = event.value

    def _place(self, value: Any) -> None:
        if not self.open:
            self.document = value
            return
        collection = self.open[-1][0]
        if isinstance(collection, list):
            collection.append(value)
        else:
            collection[self.key[-1]] = value
            self.key[-1] = None

    def _loc(self) -> Loc:
        """Where the next value goes."""
        if not self.open:
            return ()
        collection, loc = self.open[-1]
        if isinstance(collection, list):
            return (*loc, len(collection))
        return loc if self.key[-1] is None else (*loc, self.key[-1])


_RESOLVER = yaml.resolver.Resolver()
_CONSTRUCT = yaml.constructor.SafeConstructor()
_CONSTRUCTORS = {
    f"{_YAML}int": _CONSTRUCT.construct_yaml_int,
    f"{_YAML}float": _CONSTRUCT.construct_yaml_float,
    f"{_YAML}bool": _CONSTRUCT.construct_yaml_bool,
    f"{_YAML}null": _CONSTRUCT.construct_yaml_null,
}


def _yaml_scalar(event: yaml.ScalarEvent, loc: Loc) -> Any:
    """A scalar as YAML 1.1 resolves it (``1`` an int, ``yes`` a bool, ``~`` null), limited to JSON's kinds."""
    if event.tag in (None, "!"):
        tag = _RESOLVER.resolve(yaml.ScalarNode, event.value, event.implicit)
    elif event.tag in _YAML_SCALARS:
        tag = event.tag
    else:
        raise BodyError(loc, f"the YAML tag {_short_tag(event.tag)} is not accepted: a spec is plain data")
    construct = _CONSTRUCTORS.get(tag)
    if construct is None:  # a string, or a kind JSON lacks (a timestamp, a merge key): its text
        return event.value
    if len(event.value) > MAX_NUMBER_TEXT:
        raise BodyError(loc, f"a number written in {len(event.value)} characters is beyond any field's bounds")
    try:
        value = construct(yaml.ScalarNode(tag, event.value))
    except ValueError:
        raise BodyError(loc, f"{event.value[:40]!r} is not a valid {tag.removeprefix(_YAML)}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BodyError(loc, f"{event.value[:40]} is not a finite number")
    return value


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML) if tag.startswith(_YAML) else tag


def check_plain(data: Any) -> None:
    """Walk ``data`` (without recursion): every string, key or value, must be valid Unicode without a NUL
    character (no database stores one, and a lone surrogate cannot be written back in a response), every
    number representable, and the whole within ``MAX_VALUES`` values and ``MAX_DEPTH`` levels."""
    pending: list[tuple[Loc, Any]] = [((), data)]
    count = 1
    while pending:
        loc, value = pending.pop()
        if len(loc) > MAX_DEPTH:
            raise BodyError(loc[:MAX_DEPTH], f"the body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, str):
            _check_text(loc, value)
        elif isinstance(value, _Unrepresentable):
            raise BodyError(loc, value.reason)
        elif isinstance(value, dict | list):
            count += len(value)
            if count > MAX_VALUES:
                raise BodyError((), f"the body holds more than {MAX_VALUES} values")
            if isinstance(value, list):
                pending.extend(((*loc, index), item) for index, item in enumerate(value))
                continue
            for key, item in value.items():
                _check_text((*loc, _printable(key)), key)
                pending.append(((*loc, key), item))


def _check_text(loc: Loc, text: str) -> None:
    if "\x00" in text:
        raise BodyError(loc, "must not contain a NUL character")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise BodyError(loc, f"holds a lone surrogate (\\u{ord(text[exc.start]):04x}), not Unicode") from None


def _printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot encode escaped, for an error's ``loc``."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
