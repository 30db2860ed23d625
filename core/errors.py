"""The one exception type users see: a clear, one-line message naming the file and the problem."""


class InputError(ValueError):
    """Bad user input (a file, a field, a parameter). ``str(err)`` is a single line for the CLI."""

    def __init__(self, source: object, problem: str) -> None:
        self.source = str(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")
