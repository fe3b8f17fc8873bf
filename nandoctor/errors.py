"""One user-facing error type, with a hint that says what to do.

Every error a user can cause by what they wrote (config, files, their own code
failing while we build their objects) is a ``NandoctorError``. The CLI prints it
as one paragraph and exits with status 2; nothing else reaches the user as a
traceback.
"""

from __future__ import annotations


class NandoctorError(Exception):
    """A problem with the user's input, explained.

    ``where`` is ``file`` or ``file, line N`` when known; ``key`` is the config
    key involved (``optimizer._target_``); ``hint`` says what to do next.
    """

    exit_code = 2

    def __init__(self, message: str, *, hint: str | None = None, where: str | None = None,
                 key: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.where = where
        self.key = key

    def render(self) -> str:
        """The one paragraph the CLI prints."""
        head = []
        if self.where:
            head.append(self.where)
        if self.key:
            head.append(f"key '{self.key}'")
        text = (": ".join([", ".join(head), self.message]) if head else self.message)
        if self.hint:
            text += f"\nWhat to do: {self.hint}"
        return text

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.render()


class ConfigError(NandoctorError):
    """The YAML file itself: missing, unreadable, malformed, unknown or missing keys."""


class LoadError(NandoctorError):
    """A ``_target_`` that does not resolve, or user code that raises while we build it."""


class DataError(NandoctorError):
    """The dataset cannot be used at all (empty, batches of the wrong form)."""
