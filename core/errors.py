"""The one exception type users see: a clear, one-line message naming the file and the problem."""

from __future__ import annotations

MAX_MESSAGE = 300  # characters of one error line; longer ones are cut in the middle


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """``text`` as one printable line of at most ``limit`` characters.

    Control and other non-printable characters are escaped (``\\n``, ``\\x1b``, ``\\u2028``), so
    a file or run name cannot forge extra lines in a terminal or a log; a long text keeps its
    start and its end (where a path's file name is) around an ellipsis.

    Parameters
    ----------
    text : anything; ``str(text)`` is shown
    limit : the most characters returned (at least 20)

    Returns
    -------
    str
    """
    out = []
    for ch in str(text):
        if ch.isprintable():
            out.append(ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        else:
            out.append(ascii(ch)[1:-1])  # '\x1b', '\u2028', ...
    line = "".join(out)
    limit = max(limit, 20)
    if len(line) > limit:
        head = (limit - 1) * 2 // 3
        line = line[:head] + "…" + line[len(line) - (limit - 1 - head) :]
    return line


class InputError(ValueError):
    """Bad user input (a file, a field, a parameter). ``str(err)`` is a single line for the CLI.

    ``source`` names the file or option and ``problem`` says what is wrong; both are made
    printable and bounded (:func:`one_line`), whatever the input held.
    """

    def __init__(self, source: object, problem: str) -> None:
        self.source = one_line(source, 160)
        self.problem = one_line(problem, MAX_MESSAGE - 20)
        super().__init__(f"{self.source}: {self.problem}")
