"""Case selection as in pytest: `-k EXPR` matches case ids by substring, `-m EXPR` matches
markers by name; EXPR combines words with `and`, `or`, `not` and parentheses. Parsed by a
small recursive-descent parser: an expression is never evaluated as Python."""

from __future__ import annotations

import re
from collections.abc import Callable

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
Predicate = Callable[[str], bool]


class SelectionError(ValueError):
    pass


def _tokens(expression: str) -> list[str]:
    tokens, position = [], 0
    expression = expression.rstrip()
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:  # only trailing whitespace can fail to match
            break
        tokens.append(match.group(1))
        position = match.end()
    return tokens


def matches(expression: str, word_matches: Predicate) -> bool:
    """Evaluate `expression`, each bare word answered by `word_matches`."""
    tokens = _tokens(expression)
    if not tokens:
        raise SelectionError(f"empty selection expression {expression!r}")
    position = 0

    def peek() -> str | None:
        return tokens[position] if position < len(tokens) else None

    def take() -> str:
        nonlocal position
        token = peek()
        if token is None:
            raise SelectionError(f"unexpected end of expression {expression!r}")
        position += 1
        return token

    def disjunction() -> bool:
        value = conjunction()
        while peek() == "or":
            take()
            value = conjunction() or value
        return value

    def conjunction() -> bool:
        value = negation()
        while peek() == "and":
            take()
            value = negation() and value
        return value

    def negation() -> bool:
        if peek() == "not":
            take()
            return not negation()
        return atom()

    def atom() -> bool:
        token = take()
        if token == "(":
            value = disjunction()
            if take() != ")":
                raise SelectionError(f"missing ')' in {expression!r}")
            return value
        if token in (")", "and", "or", "not"):
            raise SelectionError(f"unexpected {token!r} in {expression!r}")
        return word_matches(token)

    result = disjunction()
    if peek() is not None:
        raise SelectionError(f"unexpected {peek()!r} in {expression!r}")
    return result


def keyword_matches(expression: str, case_id: str) -> bool:
    """`-k`: a word matches when it is a case-insensitive substring of the id."""
    return matches(expression, lambda word: word.lower() in case_id.lower())


def marker_matches(expression: str, markers: list[str]) -> bool:
    """`-m`: a word matches when the case carries that marker."""
    return matches(expression, lambda word: word in markers)
