"""Error type of the data layer.

:class:`DataError` is raised for every problem with a user's data: an image file that cannot be read,
an annotation file that does not parse or breaks the format, a class name that is not in the class
list. It subclasses :class:`ValueError`, its message always starts with the file it is about, and
``.path`` holds that file (or ``None``), so callers can catch it, log it and skip the item.
"""

from __future__ import annotations

import os
from typing import Optional, Union

__all__ = ["DataError"]


class DataError(ValueError):
    """Bad user data (image or annotation file); the message names the file, field and value."""

    def __init__(self, message: str, path: Optional[Union[str, "os.PathLike[str]"]] = None) -> None:
        super().__init__(message)
        self.path: Optional[str] = os.fspath(path) if path is not None else None
