"""The errors a user can fix without touching the code, and how every command line reports them.

A command catches `AgffError` (and `OSError` where a path the user gave cannot
be read or written) and prints it as one `error: ...` line with exit status 2;
anything else that escapes is a bug and keeps its traceback. Each class also
derives from the builtin that callers caught before the family existed, so
`except ValueError` and `except FileNotFoundError` keep working. No torch:
the runtime raises these too.
"""

from __future__ import annotations

import sys

EXIT_STATUS = 2  # a command that could not run because of the user's input


class AgffError(Exception):
    """A mistake in what the user asked for or gave; the message says what to do instead."""

    def __str__(self) -> str:
        # KeyError quotes its message; these messages are sentences for people.
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(AgffError, ValueError):
    """A flag value, data file or image that is not what the command needs."""


class ImageSizeError(InputError):
    """An image whose shape the model's resize refuses (aspect ratio over the limit, no pixels); says what to do."""


class MissingFileError(AgffError, FileNotFoundError):
    """A file or folder the user named, or one an artifact needs beside it, is not there."""


class ArtifactError(AgffError, ValueError):
    """A checkpoint, bundle, engine or index that is there but does not match what reads it."""


class NotInBundleError(ArtifactError, KeyError):
    """A bundle asked for a precision or graph it does not hold."""


class MissingDependencyError(AgffError, ImportError):
    """An optional package the command needs is not installed; the message names the extra to install."""


def print_error(err: BaseException | str) -> int:
    """Print `err` as a command's one `error:` line on stderr; returns the exit status for it."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_STATUS
