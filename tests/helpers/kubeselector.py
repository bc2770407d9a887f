"""Label selectors as the API server parses and matches them (apimachinery ``pkg/labels``), with no I/O.

A port of ``labels.Parse``: the same lexer (``=``, ``==``, ``!=``, ``!``, ``in``, ``notin``, ``>``,
``<``, parentheses, commas), the same recursive descent and the same error texts, so a list with
a bad ``labelSelector`` gets the 400 the real server sends (``unable to parse requirement: ...``,
``found 'x', expected: ...``). Requirements are ANDed; keys and values are checked like label keys
and values (``validation.IsQualifiedName``, ``IsValidLabelValue``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.helpers.kubestatus import FieldError, aggregate

__all__ = ["Requirement", "Selector", "SelectorError", "parse_selector", "qualified_name_errors"]

END, IDENTIFIER, ERROR = "end of string", "identifier", "error"
#: operator and punctuation literals, as the lexer's string2token table has them
_LITERALS = (")", ",", "!", "==", "=", ">", "in", "<", "!=", "notin", "(")
_SPECIAL = frozenset("=!(),><")
_WHITESPACE = frozenset(" \t\r\n")
#: the binary operators, in the order the "expected:" message lists them
_BINARY = ("in", "notin", "=", "==", "!=", "gt", "lt")
_OPERATORS = {"in": "in", "notin": "notin", "=": "=", "==": "==", "!=": "!=", ">": "gt", "<": "lt"}

_QUALIFIED = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
_QUALIFIED_MESSAGE = ("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                      "alphanumeric character")
_LABEL_VALUE = f"({_QUALIFIED})?"
_LABEL_VALUE_MESSAGE = ("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
                        "'.', and must start and end with an alphanumeric character")
_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_SUBDOMAIN_MESSAGE = ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
                      "'.', and must start and end with an alphanumeric character")


class SelectorError(ValueError):
    """A selector the API server refuses; the text is its 400 message."""


@dataclass(frozen=True)
class Requirement:
    """``key operator values``: one ANDed term."""

    key: str
    operator: str  # in, notin, =, ==, !=, gt, lt, exists, !
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        """``Requirement.Matches``: a missing key satisfies only ``!=``, ``notin`` and ``!``."""
        if self.operator in ("exists", "!"):
            return (self.key in labels) == (self.operator == "exists")
        if self.key not in labels:
            return self.operator in ("!=", "notin")
        value = labels[self.key]
        if self.operator in ("gt", "lt"):
            return _compare(value, self.values[0], self.operator)
        return (value in self.values) == (self.operator in ("in", "=", "=="))


def _compare(value: str, bound: str, operator: str) -> bool:
    try:
        number, limit = int(value), int(bound)
    except ValueError:
        return False
    return number > limit if operator == "gt" else number < limit


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str] | None) -> bool:
        return all(requirement.matches(labels or {}) for requirement in self.requirements)


def parse_selector(text: str) -> Selector:
    """``labels.Parse(text)``; raises SelectorError with the API server's message."""
    return Selector(tuple(sorted(_Parser(_lex(text)).parse(), key=lambda r: r.key)))


# -- the lexer -----------------------------------------------------------------------


def _lex(text: str) -> list[tuple[str, str]]:
    items, position = [], 0
    while True:
        while position < len(text) and text[position] in _WHITESPACE:
            position += 1
        if position >= len(text):
            return items + [(END, "")]
        scan = _scan_special if text[position] in _SPECIAL else _scan_word
        token, literal, position = scan(text, position)
        items.append((token, literal))


def _scan_word(text: str, position: int) -> tuple[str, str, int]:
    """An identifier, or the keywords ``in``/``notin``: everything up to a space or a symbol."""
    start = position
    while position < len(text) and text[position] not in _SPECIAL and text[position] not in _WHITESPACE:
        position += 1
    word = text[start:position]
    return (word if word in ("in", "notin") else IDENTIFIER), word, position


def _scan_special(text: str, position: int) -> tuple[str, str, int]:
    """The longest operator at ``position``: ``!=`` before ``!``, ``==`` before ``=``."""
    buffer, last = "", None
    while position < len(text) and text[position] in _SPECIAL:
        buffer += text[position]
        position += 1
        if buffer in _LITERALS:
            last = buffer
        elif last is not None:
            position -= 1
            break
    if last is None:
        return ERROR, f"error expected: keyword found '{buffer}'", position
    return last, last, position


# -- the parser ----------------------------------------------------------------------


class _Parser:
    """``labels.Parser``: in a value position ``in`` and ``notin`` are plain identifiers."""

    def __init__(self, items: list[tuple[str, str]]):
        self.items = items
        self.position = 0

    def lookahead(self, values: bool = True) -> tuple[str, str]:
        return self._as(self.items[self.position], values)

    def consume(self, values: bool = True) -> tuple[str, str]:
        self.position += 1
        return self._as(self.items[self.position - 1], values)

    @staticmethod
    def _as(item: tuple[str, str], values: bool) -> tuple[str, str]:
        token, literal = item
        return (IDENTIFIER if values and token in ("in", "notin") else token), literal

    def parse(self) -> list[Requirement]:
        requirements = []
        while True:
            token, literal = self.lookahead()
            if token == END:
                return requirements
            if token not in (IDENTIFIER, "!"):
                raise SelectorError(f"found '{literal}', expected: !, identifier, or 'end of string'")
            try:
                requirements.append(self.requirement())
            except SelectorError as error:
                raise SelectorError(f"unable to parse requirement: {error}") from None
            token, literal = self.consume()
            if token == END:
                return requirements
            if token != ",":
                raise SelectorError(f"found '{literal}', expected: ',' or 'end of string'")
            token, literal = self.lookahead()
            if token not in (IDENTIFIER, "!"):
                raise SelectorError(f"found '{literal}', expected: identifier after ','")

    def requirement(self) -> Requirement:
        key, operator = self.key_and_operator()
        if operator in ("exists", "!"):
            return _requirement(key, operator, ())
        operator = self.operator()
        values = self.value_set() if operator in ("in", "notin") else self.exact_value()
        return _requirement(key, operator, tuple(sorted(values)))

    def key_and_operator(self) -> tuple[str, str]:
        token, literal = self.consume()
        operator = ""
        if token == "!":
            operator = "!"
            token, literal = self.consume()
        if token != IDENTIFIER:
            raise SelectorError(f"found '{literal}', expected: identifier")
        if errors := qualified_name_errors(literal):  # the parser's field path is nil
            raise SelectorError(str(FieldError.invalid("<nil>", literal, "; ".join(errors))))
        if self.lookahead()[0] in (END, ","):
            operator = operator or "exists"
        return literal, operator

    def operator(self) -> str:
        token, literal = self.consume(values=False)
        if token not in _OPERATORS:
            raise SelectorError(f"found '{literal}', expected: {', '.join(_BINARY)}")
        return _OPERATORS[token]

    def value_set(self) -> set[str]:
        token, literal = self.consume()
        if token != "(":
            raise SelectorError(f"found '{literal}' expected: '('")
        token, literal = self.lookahead()
        if token == ")":  # "()" is the set of the empty string
            self.consume()
            return {""}
        if token not in (IDENTIFIER, ","):
            raise SelectorError(f"found '{literal}', expected: ',', ')' or identifier")
        values = self.identifiers()
        if self.consume()[0] != ")":
            raise SelectorError(f"found '{literal}', expected: ')'")
        return values

    def identifiers(self) -> set[str]:
        """A comma-separated list in which an empty place is the empty string: ``(a,,b)``, ``(,a)``."""
        values: set[str] = set()
        while True:
            token, literal = self.consume()
            if token == IDENTIFIER:
                values.add(literal)
                following, text = self.lookahead()
                if following == ")":
                    return values
                if following != ",":
                    raise SelectorError(f"found '{text}', expected: ',' or ')'")
            elif token == ",":
                if not values or self.lookahead()[0] in (")", ","):
                    values.add("")
                if self.lookahead()[0] == ")":
                    return values
            else:
                raise SelectorError(f"found '{literal}', expected: ',', or identifier")

    def exact_value(self) -> set[str]:
        token, _ = self.lookahead()
        if token in (END, ","):
            return {""}
        token, literal = self.consume()
        if token != IDENTIFIER:
            raise SelectorError(f"found '{literal}', expected: identifier")
        return {literal}


def _requirement(key: str, operator: str, values: tuple[str, ...]) -> Requirement:
    """``NewRequirement``: the values are checked as label values (and as integers for gt/lt)."""
    errors = []
    if operator in ("gt", "lt"):
        errors += [FieldError.invalid(f"values[{i}]", v, "for 'Gt', 'Lt' operators, the value must be an integer")
                   for i, v in enumerate(values) if not re.fullmatch(r"[+-]?[0-9]+", v)]
    for index, value in enumerate(values):
        if problems := _label_value_errors(value):
            errors.append(FieldError.invalid(f"values[{index}][{key}]", value, "; ".join(problems)))
    if errors:
        raise SelectorError(aggregate(errors))
    return Requirement(key, operator, values)


def _regex_error(message: str, pattern: str, *examples: str) -> str:
    """``validation.RegexError``, whose double space after each comma is the real one."""
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{pattern}')"


def qualified_name_errors(value: str) -> list[str]:
    """``validation.IsQualifiedName``: an optional DNS-subdomain prefix and ``/``, then a name."""
    parts = value.split("/")
    if len(parts) > 2:
        return ["a qualified name " + _regex_error(_QUALIFIED_MESSAGE, _QUALIFIED, "MyName", "my.name", "123-abc")
                + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"]
    errors = []
    if len(parts) == 2:
        errors += ["prefix part " + problem for problem in _prefix_errors(parts[0])]
    name = parts[-1]
    if not name:
        errors.append("name part must be non-empty")
    elif len(name) > 63:
        errors.append("name part must be no more than 63 characters")
    if not re.fullmatch(_QUALIFIED, name):
        errors.append("name part " + _regex_error(_QUALIFIED_MESSAGE, _QUALIFIED, "MyName", "my.name", "123-abc"))
    return errors


def _prefix_errors(prefix: str) -> list[str]:
    if not prefix:
        return ["must be non-empty"]
    errors = ["must be no more than 253 characters"] if len(prefix) > 253 else []
    if not re.fullmatch(_SUBDOMAIN, prefix):
        errors.append(_regex_error(_SUBDOMAIN_MESSAGE, _SUBDOMAIN, "example.com"))
    return errors


def _label_value_errors(value: str) -> list[str]:
    errors = ["must be no more than 63 characters"] if len(value) > 63 else []
    if not re.fullmatch(_LABEL_VALUE, value):
        errors.append(_regex_error(_LABEL_VALUE_MESSAGE, _LABEL_VALUE, "MyValue", "my_value", "12345"))
    return errors
