"""Filter expressions over a table's columns, such as ``label == 3 and drift > 4``, parsed safely.

The text a user types is never evaluated by Python (no ``eval``, no ``pandas.eval``): it is
parsed with :mod:`ast` and every node is checked against a short whitelist, comparisons joined by
``and`` / ``or`` / ``not`` over known column names and literals, before anything runs. Calls,
attributes, subscripts, lambdas, names that are not columns, huge literals and long or deeply
nested text are refused with one line naming the problem. The checked tree is then applied to a
table with vectorised comparisons (a missing value compares false).

Grammar, informally::

    expr    := expr 'and' expr | expr 'or' expr | 'not' expr | '(' expr ')' | compare | COLUMN
    compare := operand (('==' | '!=' | '<' | '<=' | '>' | '>=') operand)+
             | operand ('in' | 'not in') '[' literal (',' literal)* ']'
    operand := COLUMN | literal | '-' NUMBER
    literal := NUMBER | 'text' | True | False

A column name is the table's column with spaces written as ``_`` (``dropped_at_epoch``); a bare
column stands for ``column == True`` (``poison and drift > 4``).
"""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from poisonlens.errors import InputError, one_line

MAX_TEXT = 500  # characters of an expression
MAX_NODES = 200  # syntax nodes after parsing
MAX_NUMBER = 1e15  # largest magnitude of a number literal
MAX_STRING = 200  # characters of a text literal
MAX_LIST = 100  # values in an `in [...]` list
SOURCE = "filter"

_COMPARE = {
    ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
    ast.In: "in", ast.NotIn: "not in",
}
# what each refused node is called in the one-line message
_REFUSED = {
    ast.Call: "a function call", ast.Attribute: "attribute access", ast.Subscript: "indexing",
    ast.Lambda: "a lambda", ast.BinOp: "arithmetic", ast.IfExp: "an if-expression",
    ast.NamedExpr: "an assignment", ast.Starred: "a starred expression", ast.Dict: "a dict",
    ast.Set: "a set", ast.ListComp: "a comprehension", ast.GeneratorExp: "a comprehension",
    ast.DictComp: "a comprehension", ast.SetComp: "a comprehension", ast.JoinedStr: "an f-string",
    ast.Await: "await", ast.Yield: "yield", ast.YieldFrom: "yield", ast.Slice: "a slice",
}


def _refuse(problem: str) -> InputError:
    return InputError(SOURCE, one_line(problem, 200))


def column_key(name: str) -> str:
    """How a column is written in an expression: its name with spaces as ``_``.

    Parameters
    ----------
    name : str or object
        A table column's name (converted with ``str``); leading and trailing space is dropped
        and every run of white space inside becomes one ``_``.

    Returns
    -------
    str, e.g. ``"dropped_at_epoch"`` for ``"dropped at epoch"``
    """
    return re.sub(r"\s+", "_", str(name).strip())


@dataclass(frozen=True)
class RowFilter:
    """A checked filter expression, made by :func:`parse_filter`; :meth:`mask` applies it.

    Only :func:`parse_filter` builds one, so its tree has passed the grammar's checks and names
    only the columns listed.

    Attributes
    ----------
    text : str
        The expression as typed, e.g. ``label == 3 and drift > 4``.
    columns : tuple of str
        The table's column names the expression reads, in the order they first appear.
    """

    text: str
    columns: tuple[str, ...]
    _tree: ast.Expression
    _names: dict[str, str]  # name in the expression -> table column

    def mask(self, table: pd.DataFrame) -> np.ndarray:
        """The rows of ``table`` the expression keeps.

        Parameters
        ----------
        table : pandas.DataFrame
            Must hold every column of :attr:`columns`; other columns are ignored. A missing
            value (NaN, None) makes its comparison false.

        Returns
        -------
        bool ndarray of shape (len(table),)

        Raises
        ------
        InputError
            One line ``filter: ...`` when a column is absent or a value cannot be compared
            (text against a number).
        """
        missing = [c for c in self.columns if c not in table.columns]
        if missing:
            raise _refuse(f"the table has no column {missing[0]!r}")
        try:
            with np.errstate(invalid="ignore"):
                out = _truth(_evaluate(self._tree.body, table, self._names), len(table))
        except TypeError as err:
            raise _refuse(f"{self.text!r}: cannot compare these values ({one_line(str(err), 80)})") from None
        return out


def parse_filter(text: str, columns: Iterable[str]) -> RowFilter:
    """Check ``text`` against the grammar above and the table's ``columns``; nothing runs.

    Parameters
    ----------
    text : the expression, e.g. ``label == 3 and drift > 4``
    columns : the names of the table's columns

    Returns
    -------
    RowFilter

    Raises
    ------
    InputError
        One line ``filter: <problem>`` for anything outside the grammar: an unknown name, a
        call, attribute access, a literal too large, a syntax error, too long a text.
    """
    if not isinstance(text, str):
        raise _refuse("the expression must be text")
    if len(text) > MAX_TEXT:
        raise _refuse(f"too long ({len(text):,} characters; at most {MAX_TEXT})")
    if "\0" in text:
        raise _refuse("the expression contains a NUL character")
    names = {column_key(c): str(c) for c in columns}
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        where = f" at character {err.offset}" if err.offset else ""
        raise _refuse(f"not a valid expression{where}: {one_line(err.msg or 'syntax error', 80)}") from None
    except (ValueError, MemoryError, RecursionError):  # NUL bytes, too deeply nested text
        raise _refuse("not a valid expression (too deeply nested)") from None
    nodes = list(ast.walk(tree))
    if len(nodes) > MAX_NODES:
        raise _refuse(f"too complex ({len(nodes)} parts; at most {MAX_NODES})")
    used: list[str] = []
    _check(tree.body, names, used, top=True)
    return RowFilter(text, tuple(dict.fromkeys(names[u] for u in used)), tree, names)


# --- checking ------------------------------------------------------------------------------


def _check(node: ast.AST, names: dict[str, str], used: list[str], *, top: bool = False) -> None:
    """Raise InputError unless ``node`` is a boolean expression of the grammar."""
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, names, used, top=True)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, names, used, top=True)
    elif isinstance(node, ast.Compare):
        operands = [node.left, *node.comparators]
        for op, right in zip(node.ops, node.comparators, strict=True):
            if type(op) not in _COMPARE:
                raise _refuse(f"the operator {type(op).__name__} is not allowed; use ==, !=, <, <=, >, >=, in")
            if isinstance(op, ast.In | ast.NotIn) and not isinstance(right, ast.List | ast.Tuple):
                raise _refuse("'in' needs a list of values, e.g. label in [1, 3]")
        for operand in operands:
            _check_operand(operand, names, used)
    elif isinstance(node, ast.Name):
        _check_operand(node, names, used)  # a bare column: column == True
    else:
        _check_operand(node, names, used)  # refuses what is not an operand, with its name
        raise _refuse("expected a comparison such as drift > 4, joined by and / or / not")


def _check_operand(node: ast.AST, names: dict[str, str], used: list[str]) -> None:
    if isinstance(node, ast.Name):
        if node.id not in names:
            known = ", ".join(sorted(names)[:12])
            raise _refuse(f"unknown column {node.id!r}; use {known}")
        used.append(node.id)
    elif isinstance(node, ast.Constant):
        _check_literal(node.value)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        if not (isinstance(node.operand, ast.Constant) and _is_number(node.operand.value)):
            raise _refuse("a sign goes only before a number")
        _check_literal(node.operand.value)
    elif isinstance(node, ast.List | ast.Tuple):
        if len(node.elts) > MAX_LIST:
            raise _refuse(f"too long a list ({len(node.elts)} values; at most {MAX_LIST})")
        for element in node.elts:
            if isinstance(element, ast.List | ast.Tuple):
                raise _refuse("a list may hold only numbers and texts")
            _check_operand(element, names, used)
            if isinstance(element, ast.Name):
                raise _refuse("a list may hold only numbers and texts")
    elif isinstance(node, ast.BoolOp | ast.Compare) or (
        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
    ):
        raise _refuse("put parentheses around each comparison joined by and / or")
    else:
        what = _REFUSED.get(type(node), type(node).__name__)
        raise _refuse(f"{what} is not allowed; only comparisons of columns and values")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_literal(value: object) -> None:
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        if abs(value) > MAX_NUMBER:
            raise _refuse(f"the number {one_line(str(value), 30)} is too large (at most 1e15)")
    elif isinstance(value, float):
        if not math.isfinite(value) or abs(value) > MAX_NUMBER:
            raise _refuse(f"the number {value!r} is not finite or too large (at most 1e15)")
    elif isinstance(value, str):
        if len(value) > MAX_STRING:
            raise _refuse(f"a text of {len(value):,} characters is too long (at most {MAX_STRING})")
    else:
        raise _refuse(f"a {type(value).__name__} literal is not allowed; use numbers, texts, True, False")


# --- applying ------------------------------------------------------------------------------


def _operand(node: ast.AST, table: pd.DataFrame, names: dict[str, str]):
    if isinstance(node, ast.Name):
        return table[names[node.id]]
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp):
        value = node.operand.value  # checked: a number
        return -value if isinstance(node.op, ast.USub) else value
    return [_operand(e, table, names) for e in node.elts]  # a list, checked: literals only


def _compare(left, op: ast.cmpop, right) -> object:
    if isinstance(op, ast.In | ast.NotIn):
        series = left if isinstance(left, pd.Series) else pd.Series([left])
        found = series.isin(right).to_numpy(bool)
        return ~found if isinstance(op, ast.NotIn) else found
    result = {
        ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
        ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b,
    }[type(op)](left, right)
    if isinstance(result, pd.Series):
        # a missing value compares false (pandas' != says true for NaN)
        missing = np.zeros(len(result), bool)
        for side in (left, right):
            if isinstance(side, pd.Series):
                missing |= side.isna().to_numpy()
        return result.fillna(False).to_numpy(bool) & ~missing
    return bool(result)


def _evaluate(node: ast.AST, table: pd.DataFrame, names: dict[str, str]):
    n = len(table)
    if isinstance(node, ast.BoolOp):
        parts = [_truth(_evaluate(v, table, names), n) for v in node.values]
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        out = parts[0]
        for part in parts[1:]:
            out = combine(out, part)
        return out
    if isinstance(node, ast.UnaryOp):  # not (checked)
        return ~_truth(_evaluate(node.operand, table, names), n)
    if isinstance(node, ast.Name):  # a bare column: column == True
        return _compare(table[names[node.id]], ast.Eq(), True)
    operands = [_operand(o, table, names) for o in [node.left, *node.comparators]]
    out = np.ones(n, bool)
    for (left, right), op in zip(zip(operands, operands[1:], strict=False), node.ops, strict=True):
        out &= _truth(_compare(left, op, right), n)
    return out


def _truth(value, n: int) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(bool)
    return np.full(n, bool(value))
