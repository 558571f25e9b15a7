"""Label and field selectors, parsed as the API server parses them.

Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k` (exists) and
`!k` (does not exist), joined by commas; `!=` and `notin` also match objects without the
label, as in the real API. Field selectors: `path=value`, `path==value`, `path!=value`
joined by commas, where path is a dotted field path (`metadata.name`, `spec.type`); the real
API accepts only a few paths per kind, this server any.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final

__all__ = ["FieldSelector", "LabelSelector", "SelectorError"]


class SelectorError(ValueError):
    """A selector that does not parse; the message is the API's kind of explanation."""


_KEY: Final = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE: Final = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE: Final = re.compile(_KEY + r"\Z")
_VALUE_RE: Final = re.compile(_VALUE + r"\Z")
_SET_RE: Final = re.compile(r"(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\Z")
_CMP_RE: Final = re.compile(r"(?P<key>[^=!\s]+)\s*(?P<op>==|=|!=)\s*(?P<value>\S*)\Z")

Labels = Mapping[str, str]
_Requirement = Callable[[Labels], bool]


def _split(text: str) -> list[str]:
    """Requirements separated by commas outside parentheses."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return parts


def _check_key(key: str, selector: str) -> str:
    if not _KEY_RE.match(key):
        raise SelectorError(
            f"unable to parse requirement: invalid label key {key!r} in {selector!r}"
        )
    return key


def _check_value(value: str, selector: str) -> str:
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise SelectorError(f"unable to parse requirement: invalid label value {value!r}")
    return value


def _requirement(text: str, selector: str) -> _Requirement:
    if text.startswith("!"):
        key = _check_key(text[1:].strip(), selector)
        return lambda labels: key not in labels
    if match := _SET_RE.match(text):
        key = _check_key(match["key"], selector)
        values = frozenset(
            _check_value(v.strip(), selector) for v in match["values"].split(",") if v.strip()
        )
        if not values:
            raise SelectorError(f"unable to parse requirement: {text!r}: empty value set")
        if match["op"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _CMP_RE.match(text):
        key = _check_key(match["key"], selector)
        value = _check_value(match["value"], selector)
        if match["op"] == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    key = _check_key(text, selector)
    return lambda labels: key in labels


@dataclass(frozen=True, slots=True)
class LabelSelector:
    requirements: tuple[_Requirement, ...]

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        text = text.strip()
        if not text:
            return cls(())
        parts = _split(text)
        if any(not part for part in parts):
            raise SelectorError(f"unable to parse requirement: empty requirement in {text!r}")
        return cls(tuple(_requirement(part, text) for part in parts))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, labels: Labels) -> bool:
        return all(requirement(labels) for requirement in self.requirements)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    terms: tuple[tuple[tuple[str, ...], bool, str], ...]  # (path, equal, value)

    @classmethod
    def parse(cls, text: str) -> FieldSelector:
        text = text.strip()
        if not text:
            return cls(())
        terms: list[tuple[tuple[str, ...], bool, str]] = []
        for part in text.split(","):
            match = _CMP_RE.match(part.strip())
            if not match:
                raise SelectorError(f"invalid selector: {text!r}; can't understand {part!r}")
            terms.append((tuple(match["key"].split(".")), match["op"] != "!=", match["value"]))
        return cls(tuple(terms))

    @property
    def empty(self) -> bool:
        return not self.terms

    @property
    def only_metadata(self) -> bool:
        """Whether every term reads metadata.name or metadata.namespace (no parse needed)."""
        return all(
            path in (("metadata", "name"), ("metadata", "namespace")) for path, _, _ in self.terms
        )

    def matches_names(self, namespace: str, name: str) -> bool:
        for path, equal, value in self.terms:
            actual = name if path[1] == "name" else namespace
            if (actual == value) != equal:
                return False
        return True

    def matches(self, obj: Mapping[str, object]) -> bool:
        for path, equal, value in self.terms:
            current: object = obj
            for step in path:
                current = current.get(step) if isinstance(current, Mapping) else None
            actual = "" if current is None else _field_text(current)
            if (actual == value) != equal:
                return False
        return True


def _field_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
