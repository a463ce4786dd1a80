"""Errors that reach the user as one line.

Everything the user can cause (bad files, bad configs, bad arguments) raises a subclass of
:class:`AdactrError`; the CLI prints ``error: <message>`` and exits non-zero. Messages name the file,
row (1-based, as a text editor shows it) and column when there is one.
"""

from __future__ import annotations


class AdactrError(Exception):
    """Base class: an error the user can fix, with a one-line message."""


class DataError(AdactrError):
    """Bad input data: names the file, row and column where it can."""

    def __init__(self, message: str, *, file: str | None = None, row: int | None = None,
                 column: str | None = None) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        self.file, self.row, self.column = file, row, column
        self.detail = message
        text = f"{', '.join(where)}: {message}" if where else message
        super().__init__(" ".join(text.splitlines()))  # one line, whatever a library's message held

    def at_row(self, row: int) -> DataError:
        """The same error moved to another row (a record number turned into the line an editor shows)."""
        return DataError(self.detail, file=self.file, row=row, column=self.column)


class DataWarning(UserWarning):
    """Input taken as it is, with something the user should know (odd lines skipped or repaired): one line
    naming the file, how many lines of each kind, and the first of each. ``adactr prepare`` prints it as
    ``warning: ...`` and keeps it in the prepared directory's ``meta.json``."""


class ConfigError(AdactrError):
    """Bad configuration: names the key and, where useful, the valid ones."""


class TrainingError(AdactrError):
    """Training cannot go on (e.g. a NaN loss); names the epoch and step."""
