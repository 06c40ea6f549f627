"""A tiny parser for the block-YAML subset the example manifests use (no PyYAML in the tests).

Supported: block mappings and sequences (also a sequence at its parent key's indentation),
``- key: value`` items that open a mapping, plain / single- / double-quoted scalars, ``#``
comments, ``---`` between documents, and the empty flow collections ``[]`` and ``{}``.
Everything else (anchors, tags, block scalars, flow collections with content, tabs) is an
error naming the line, never a silent misreading.
"""

from __future__ import annotations

import re
from typing import Any, List, Tuple

__all__ = ["load", "load_all", "YAMLError"]

_Line = Tuple[int, int, str]  # (line number, indentation, text without the comment)
_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)$")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?$")


class YAMLError(ValueError):
    pass


def load(text: str) -> Any:
    """The single document in ``text``."""
    docs = load_all(text)
    if len(docs) != 1:
        raise YAMLError(f"expected one document, found {len(docs)}")
    return docs[0]


def load_all(text: str) -> List[Any]:
    """Every ``---``-separated document in ``text``, empty ones left out."""
    docs: List[List[_Line]] = [[]]
    for number, raw in enumerate(text.splitlines(), 1):
        if raw.rstrip() == "---":
            docs.append([])
            continue
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YAMLError(f"line {number}: tab in indentation")
        body = _strip_comment(raw, number).rstrip()
        if body.strip():
            docs[-1].append((number, len(body) - len(body.lstrip(" ")), body.strip()))
    result = []
    for lines in docs:
        if lines:
            parser = _Parser(lines)
            value = parser.block(lines[0][1])
            if parser.i != len(lines):
                number, _, text_ = lines[parser.i]
                raise YAMLError(f"line {number}: unexpected {text_!r}")
            result.append(value)
    return result


def _strip_comment(line: str, number: int) -> str:
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"" and (i == 0 or line[i - 1] in " -:[{,"):
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i]
    return line


def _split_key(text: str, number: int):
    """``key: value`` -> (key, value); None when ``text`` is not a mapping entry."""
    if text[:1] in "'\"":
        end = _closing_quote(text, number)
        rest = text[end + 1:]
        if rest == ":" or rest.startswith(": "):
            return _scalar(text[: end + 1], number), rest[1:].strip()
        return None
    match = re.search(r":( |$)", text)
    if match is None:
        return None
    return text[: match.start()].strip(), text[match.end():].strip()


def _closing_quote(text: str, number: int) -> int:
    quote, i = text[0], 1
    while i < len(text):
        if quote == '"' and text[i] == "\\":
            i += 2
            continue
        if text[i] == quote:
            if quote == "'" and text[i + 1:i + 2] == "'":
                i += 2
                continue
            return i
        i += 1
    raise YAMLError(f"line {number}: unterminated quoted scalar")


def _scalar(text: str, number: int) -> Any:
    if text[:1] in "'\"":
        end = _closing_quote(text, number)
        if end != len(text) - 1:
            raise YAMLError(f"line {number}: text after a quoted scalar: {text!r}")
        inner = text[1:-1]
        if text[0] == "'":
            return inner.replace("''", "'")
        escapes = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "/": "/", "0": "\0"}
        return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), "\\" + m.group(1)), inner)
    if text in ("[]", "{}"):
        return [] if text == "[]" else {}
    if text[:1] in "[{&*!|>%@`":
        raise YAMLError(f"line {number}: unsupported YAML syntax: {text!r}")
    if text in ("~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE", "false", "False", "FALSE"):
        return text.lower() == "true"
    if _INT.match(text):
        return int(text)
    if _FLOAT.match(text):
        return float(text)
    return text


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


class _Parser:
    def __init__(self, lines: List[_Line]) -> None:
        self.lines = lines
        self.i = 0

    def block(self, indent: int) -> Any:
        if _is_item(self.lines[self.i][2]):
            return self.sequence(indent)
        return self.mapping(indent)

    def sequence(self, indent: int) -> list:
        items = []
        while self.i < len(self.lines):
            number, ind, text = self.lines[self.i]
            if ind < indent or (ind == indent and not _is_item(text)):
                break
            if ind > indent or not _is_item(text):
                raise YAMLError(f"line {number}: bad indentation of {text!r}")
            rest = text[1:].lstrip(" ")
            if not rest:
                self.i += 1
                items.append(self.nested(indent, number))
            elif _is_item(rest) or _split_key(rest, number) is not None:
                # "- key: value": the item is a block that starts on this very line
                self.lines[self.i] = (number, indent + len(text) - len(rest), rest)
                items.append(self.block(self.lines[self.i][1]))
            else:
                self.i += 1
                items.append(_scalar(rest, number))
        return items

    def mapping(self, indent: int) -> dict:
        result: dict = {}
        while self.i < len(self.lines):
            number, ind, text = self.lines[self.i]
            if ind < indent or (ind == indent and _is_item(text)):
                break
            if ind > indent:
                raise YAMLError(f"line {number}: bad indentation of {text!r}")
            entry = _split_key(text, number)
            if entry is None:
                raise YAMLError(f"line {number}: expected 'key: value', got {text!r}")
            key, value = entry
            if key in result:
                raise YAMLError(f"line {number}: duplicate key {key!r}")
            self.i += 1
            if value:
                result[key] = _scalar(value, number)
            elif (self.i < len(self.lines) and self.lines[self.i][1] == indent
                  and _is_item(self.lines[self.i][2])):
                result[key] = self.sequence(indent)  # a sequence at its key's indentation
            else:
                result[key] = self.nested(indent, number)
        return result

    def nested(self, indent: int, number: int) -> Any:
        """The block under a ``key:`` or ``-`` that ended its line: null if there is none."""
        if self.i < len(self.lines) and self.lines[self.i][1] > indent:
            return self.block(self.lines[self.i][1])
        return None
