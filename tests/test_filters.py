"""Filter expressions (poisonlens.filters): a tiny safe grammar, never Python's eval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from poisonlens.errors import InputError
from poisonlens.filters import parse_filter

TABLE = pd.DataFrame({
    "index": [0, 1, 2, 3, 4, 5],
    "label": [3, 3, 1, 3, 2, 3],
    "drift": [5.0, 1.0, 9.0, np.nan, 4.5, 4.0],
    "poison": [True, False, True, False, False, True],
    "predicted": ["cat", "dog", "cat", "ship", "cat", "dog"],
    "dropped at epoch": [2, -1, 4, -1, 2, 6],
})


def rows(text: str) -> list[int]:
    return TABLE["index"][parse_filter(text, TABLE.columns).mask(TABLE)].tolist()


@pytest.mark.parametrize("text, expected", [
    ("label == 3 and drift > 4", [0]),
    ("label == 3 or drift > 4", [0, 1, 2, 3, 4, 5]),
    ("not poison", [1, 3, 4]),
    ("poison and not (drift >= 5)", [5]),
    ("4 <= drift < 9", [0, 4, 5]),
    ("drift != 1", [0, 2, 4, 5]),  # a missing drift (row 3) compares false, even with !=
    ("predicted == 'cat'", [0, 2, 4]),
    ("predicted in ['dog', 'ship']", [1, 3, 5]),
    ("label not in [3]", [2, 4]),
    ("dropped_at_epoch >= 0 and dropped_at_epoch < 3", [0, 4]),
    ("drift > -1e3", [0, 1, 2, 4, 5]),
    ("poison == True", [0, 2, 5]),
    ("drift > label", [0, 2, 4, 5]),
])
def test_an_expression_keeps_the_rows_it_describes(text, expected):
    assert rows(text) == expected


def test_the_columns_an_expression_reads_are_named():
    assert parse_filter("label == 3 and dropped_at_epoch > 1", TABLE.columns).columns == (
        "label", "dropped at epoch")


HOSTILE = [
    ("__import__('os')", "function call"),
    ("__import__('os').system('touch /tmp/pwned')", "not allowed"),
    ("label.__class__", "attribute access"),
    ("drift.__class__.__mro__", "attribute access"),
    ("label == 3 and open('/etc/passwd')", "function call"),
    ("().__class__.__bases__[0]", "not allowed"),
    ("label[0] == 3", "indexing"),
    ("(lambda: 1)() == 1", "not allowed"),
    ("label == 9" + "9" * 400, "too large"),
    ("drift > 1e999", "not finite"),
    ("label == 10**10**10", "arithmetic"),
    ("drift + 1 > 2", "arithmetic"),
    ("os == 1", "unknown column 'os'"),
    ("label == 'x' * 10", "arithmetic"),
    ("predicted == '" + "a" * 300 + "'", "too long"),
    ("label in [" + ",".join(["1"] * 150) + "]", "too long a list"),
    ("(" * 300 + "label == 1" + ")" * 300, "too long"),
    ("(" * 220 + "label == 1" + ")" * 220, "not a valid expression"),  # Python's nesting limit
    ("label ==", "not a valid expression"),
    ("label = 3", "not a valid expression"),
    ("x" * 600, "too long"),
    ("[x for x in label] == 1", "not allowed"),
    ("f'{label}' == 'a'", "not allowed"),
    ("label == b'3'", "bytes"),
    ("label is 3", "not allowed"),
    ("3", "expected a comparison"),
    ("label == 3 if drift else 2", "if-expression"),
    ("(y := 3) == 3", "an assignment is not allowed"),
    ("label in label", "needs a list"),
]


@pytest.mark.parametrize("text, problem", HOSTILE, ids=lambda v: repr(v)[:40])
def test_anything_outside_the_grammar_is_refused_in_one_line(text, problem):
    with pytest.raises(InputError) as err:
        parse_filter(text, TABLE.columns)
    message = str(err.value)
    assert message.startswith("filter: ") and "\n" not in message and len(message) < 320, message
    assert problem in message, message


def test_nothing_runs_while_parsing(tmp_path):
    marker = tmp_path / "pwned"
    for text in (f"__import__('os').system('touch {marker}') == 0",
                 f"label == 3 or open('{marker}', 'w')"):
        with pytest.raises(InputError):
            parse_filter(text, ["label"])
    assert not marker.exists()


def test_comparing_text_with_a_number_is_one_line_when_applied():
    f = parse_filter("predicted > 3", TABLE.columns)
    with pytest.raises(InputError, match="cannot compare"):
        f.mask(TABLE)
