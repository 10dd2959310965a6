"""Errors a user can act on: each names the file, line and field at fault."""

from __future__ import annotations

import difflib


class RayalignError(Exception):
    """Base class for errors reported to the user without a traceback."""


class LocatedError(RayalignError):
    """An error in a data file, located as ``file:line: field: message``.

    >>> str(LocatedError("bad value", file="c.yaml", line=3, field="rl.lr"))
    'c.yaml:3: rl.lr: bad value'
    """

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None, field: str | None = None):
        self.message, self.file, self.line, self.field = message, file, line, field
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        what = f"{self.field}: " if self.field else ""
        return f"{where}{what}{self.message}"


class SpecError(LocatedError):
    """A malformed safety specification."""


class ConfigError(LocatedError):
    """A config file or override that does not fit the config tree."""


class EvalError(LocatedError):
    """A checkpoint list, target name or benchmark set that cannot be evaluated."""


class ModelLoadError(RayalignError):
    """A model that cannot be found or loaded."""


def did_you_mean(key: str, allowed: list[str]) -> str:
    """A hint naming the allowed key closest to a misspelt one, or "".

    >>> did_you_mean("max_wokers", ["min_workers", "max_workers"])
    "; did you mean 'max_workers'?"
    >>> did_you_mean("zzz", ["lr"])
    ''
    """
    close = difflib.get_close_matches(key, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
