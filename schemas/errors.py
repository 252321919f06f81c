"""The one base class of the errors a user causes and can fix, as opposed to bugs.

Every error type of the project that a user's input, params, files or machine can cause derives from
`UserError` (as well as from the built-in type code catches it by: ValueError, FileNotFoundError,
...). Its message is the whole story on one line: the input (file, row, path, video) and the fix.
`cli.main` prints it as `error: <message>` and exits with status 1; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user can fix; the message names the input and the fix, on one line."""


class MissingInputError(UserError, FileNotFoundError):
    """An input the command needs is not there (a table, a folder, an array): run what makes it."""
