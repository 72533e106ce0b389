"""Go's output as docker-machine produces it: encoding/json, a small part of text/template,
fmt's %v, time.Duration, text/tabwriter and the natural sort of `ls`."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, NamedTuple


def go_json(value: Any, indent: int | None = None, sort_keys: bool = False) -> str:
    """encoding/json output: Go escapes <, > and & in strings (Python does not)."""
    separators = (",", ": ") if indent is not None else (",", ":")
    text = json.dumps(
        value, indent=indent, separators=separators, sort_keys=sort_keys, ensure_ascii=False
    )
    for char, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escaped)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


class TemplateError(Exception):
    pass


class NoValue:
    """What text/template prints for a missing map key."""

    def __str__(self) -> str:
        return "<no value>"


NO_VALUE = NoValue()


class GoStruct(NamedTuple):
    """A Go struct value: unknown fields are an execution error, as in Go."""

    type_name: str
    fields: dict[str, Any]


class _Action(NamedTuple):
    words: list[str]
    line: int
    col: int


GO_KEYWORDS = {"if", "else", "end", "range", "with", "define", "template", "block", "break"}
GO_BUILTINS = {"and", "call", "html", "index", "js", "len", "not", "or", "print", "printf"}
GO_BUILTINS |= {"println", "urlquery", "eq", "ge", "gt", "le", "lt", "ne", "slice"}


class GoTemplate:
    """Fields ({{.A.B}}), string literals and one-argument functions such as {{json .}}."""

    def __init__(self, text: str, funcs: dict[str, Callable[[Any], str]]) -> None:
        self.funcs = funcs
        self.nodes: list[str | _Action] = []
        pos = 0
        while True:
            start = text.find("{{", pos)
            if start < 0:
                self.nodes.append(text[pos:])
                break
            end = text.find("}}", start + 2)
            line = text.count("\n", 0, start) + 1
            if end < 0:
                raise TemplateError(f"template: :{line}: unclosed action")
            literal, body = text[pos:start], text[start + 2 : end]
            if len(body) > 1 and body[0] == "-" and body[1].isspace():
                literal, body = literal.rstrip(), body[2:]
            trim_right = len(body) > 1 and body[-1] == "-" and body[-2].isspace()
            if trim_right:
                body = body[:-2]
            self.nodes.append(literal)
            offset = start + 2 + (len(body) - len(body.lstrip()))
            col = offset - (text.rfind("\n", 0, offset) + 1)
            self.nodes.append(self._parse_action(body.strip(), line, col))
            pos = end + 2
            if trim_right:
                while pos < len(text) and text[pos].isspace():
                    pos += 1

    def _parse_action(self, body: str, line: int, col: int) -> _Action:
        words = re.findall(r'"(?:[^"\\]|\\.)*"|\S+', body)
        if not words:
            raise TemplateError(f"template: :{line}: missing value for command")
        head = words[0]
        if head.startswith(".") or head.startswith('"'):
            if len(words) > 1:
                raise TemplateError(
                    f"template: :{line}: can't give argument to non-function {head}"
                )
        elif head in GO_KEYWORDS or head.startswith("$"):
            raise TemplateError(
                f"template: :{line}: {{{{{head}}}}} is not supported by the docker-machine double"
            )
        elif head in self.funcs:
            if len(words) != 2:
                raise TemplateError(f"template: :{line}: wrong number of args for {head}")
        elif head in GO_BUILTINS:
            raise TemplateError(
                f"template: :{line}: function {head} is not supported by the docker-machine double"
            )
        else:
            raise TemplateError(f'template: :{line}: function "{head}" not defined')
        return _Action(words, line, col)

    def execute(self, data: Any) -> str:
        out = []
        for node in self.nodes:
            if isinstance(node, str):
                out.append(node)
                continue
            head = node.words[0]
            if head in self.funcs:
                out.append(self.funcs[head](self._value(node.words[1], data, node)))
            else:
                out.append(go_format(self._value(head, data, node)))
        return "".join(out)

    def _value(self, word: str, data: Any, node: _Action) -> Any:
        if word.startswith('"'):
            return json.loads(word)
        if word == ".":
            return data
        chain = word[1:].split(".")
        value = data
        for i, field in enumerate(chain):
            where = f'template: :{node.line}:{node.col}: executing "" at <{word}>'
            if isinstance(value, GoStruct):
                if field not in value.fields:
                    raise TemplateError(
                        f"{where}: can't evaluate field {field} in type {value.type_name}"
                    )
                value = value.fields[field]
            elif isinstance(value, dict):
                value = value.get(field, NO_VALUE)
                if value is NO_VALUE and i + 1 < len(chain):
                    raise TemplateError(
                        f"{where}: nil pointer evaluating interface {{}}.{chain[i + 1]}"
                    )
            else:
                raise TemplateError(f"{where}: can't evaluate field {field} in type {type(value)}")
        return value


def go_format(value: Any) -> str:
    """fmt's %v for the values a JSON document or a listing holds."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list):
        return "[" + " ".join(go_format(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{go_format(value[k])}" for k in sorted(value)) + "]"
    return str(value)


def go_duration(seconds: float) -> str:
    ms = round(seconds * 1000)
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    minutes, rest = divmod(ms, 60000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".") + "s"
    return f"{minutes}m{secs}" if minutes else secs


def tabwrite(text: str, minwidth: int = 5, padding: int = 3) -> str:
    """Go's text/tabwriter as `docker-machine ls` configures it (pad with spaces)."""
    lines = [line.split("\t") for line in text.split("\n")]
    widths: list[int] = []
    out: list[str] = []

    def write_lines(first: int, last: int) -> None:
        for cells in lines[first:last]:
            row = [c.ljust(widths[j]) if j < len(widths) else c for j, c in enumerate(cells)]
            out.append("".join(row))

    def format_block(first: int, last: int) -> None:
        column = len(widths)
        this = first
        while this < last:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(first, this)
            first = this
            width = minwidth
            while this < last and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            format_block(first, this)
            widths.pop()
            first = this
        write_lines(first, last)

    format_block(0, len(lines))
    return "\n".join(out)


def natural_key(name: str) -> list[Any]:
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p]
