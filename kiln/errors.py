"""The root of Kiln's exception tree.

Every error Kiln raises on purpose is a `KilnError`: the CLI prints its message and exits 1,
PID 1 logs it and reaches a defined state. Anything else is a bug and keeps its traceback.
"""


class KilnError(Exception):
    """An expected failure with a message that names the problem."""
