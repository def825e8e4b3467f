"""Safe arithmetic for Countdown answers: a hand-written recursive-descent parser.

Nothing here calls eval/exec or builds Python objects from the text: the only accepted characters are
digits, '.', '+', '-', '*', '/', parentheses and whitespace, and the grammar is

    expr   := term (('+' | '-') term)*
    term   := factor (('*' | '/') factor)*
    factor := ('+' | '-') factor | '(' expr ')' | number
    number := digits ['.' digits]

Values are exact `fractions.Fraction`s, so `6/4*2 == 3` with no rounding. Input length and nesting depth
are bounded, and there is no power operator, so no input can make the evaluation slow or huge.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction

MAX_EXPRESSION_CHARS = 256
MAX_NESTING_DEPTH = 32


class ArithmeticSyntaxError(ValueError):
    """The text is not an arithmetic expression of the grammar above."""


@dataclasses.dataclass(frozen=True)
class ParsedExpression:
    """Result of parsing: the exact value (None on division by zero) and the literals in reading order."""

    value: Fraction | None
    literals: tuple[Fraction, ...]


def _tokenize(text: str) -> list[str]:
    """Splits `text` into number literals and single-character operators; raises on any other character."""
    tokens: list[str] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char.isspace():
            position += 1
        elif char in "+-*/()":
            tokens.append(char)
            position += 1
        elif char.isdigit() and char.isascii():
            end = position
            while end < len(text) and text[end].isascii() and (text[end].isdigit() or text[end] == "."):
                end += 1
            literal = text[position:end]
            if literal.count(".") > 1 or literal.endswith("."):
                raise ArithmeticSyntaxError(f"malformed number {literal!r} at column {position}")
            tokens.append(literal)
            position = end
        else:
            raise ArithmeticSyntaxError(f"character {char!r} at column {position} is not arithmetic")
    return tokens


def parse_arithmetic(text: str) -> ParsedExpression:
    """Parses and evaluates `text` exactly.

    Args:
      text: an expression such as "(100 - 93) * 3".
    Returns:
      ParsedExpression(value, literals); value is None when the expression divides by zero.
    Raises:
      ArithmeticSyntaxError (a ValueError) when `text` is empty, too long, too deeply nested, or not
      in the grammar.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ArithmeticSyntaxError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    tokens = _tokenize(text)
    if not tokens:
        raise ArithmeticSyntaxError("empty expression")
    literals: list[Fraction] = []
    cursor = 0
    divided_by_zero = False

    def peek() -> str | None:
        return tokens[cursor] if cursor < len(tokens) else None

    def take() -> str:
        nonlocal cursor
        token = tokens[cursor]
        cursor += 1
        return token

    def expr(depth: int) -> Fraction:
        value = term(depth)
        while peek() in ("+", "-"):
            value = value + term(depth) if take() == "+" else value - term(depth)
        return value

    def term(depth: int) -> Fraction:
        nonlocal divided_by_zero
        value = factor(depth)
        while peek() in ("*", "/"):
            operator = take()
            right = factor(depth)
            if operator == "*":
                value = value * right
            elif right == 0:
                # Keep parsing so that syntax errors later in the text are still reported.
                divided_by_zero = True
            else:
                value = value / right
        return value

    def factor(depth: int) -> Fraction:
        if depth > MAX_NESTING_DEPTH:
            raise ArithmeticSyntaxError(f"nesting deeper than {MAX_NESTING_DEPTH}")
        token = peek()
        if token is None:
            raise ArithmeticSyntaxError("expression ends where a number was expected")
        if token in ("+", "-"):
            take()
            value = factor(depth + 1)
            return value if token == "+" else -value
        if token == "(":
            take()
            value = expr(depth + 1)
            if peek() != ")":
                raise ArithmeticSyntaxError("missing ')'")
            take()
            return value
        if token[0].isdigit():
            take()
            literal = Fraction(token)
            literals.append(literal)
            return literal
        raise ArithmeticSyntaxError(f"unexpected {token!r} where a number was expected")

    value = expr(0)
    if cursor != len(tokens):
        raise ArithmeticSyntaxError(f"unexpected {tokens[cursor]!r} after a complete expression")
    return ParsedExpression(value=None if divided_by_zero else value, literals=tuple(literals))
