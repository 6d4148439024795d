"""A bad configuration value, named by where it came from (file or variable), field and value."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A bad value, with where it came from: `source: field: value: reason`."""

    def __init__(self, source: str, field: str, value: Any, reason: str) -> None:
        self.source, self.field, self.value, self.reason = source, field, value, reason
        super().__init__(f"{source}: {field}: {value!r} {reason}")


class ConfigProblemsError(ConfigError):
    """Every problem of one file at once (the first is also the error's own source/field/value)."""

    def __init__(self, problems: list[ConfigError]) -> None:
        first = problems[0]
        super().__init__(first.source, first.field, first.value, first.reason)
        self.problems = problems
        if len(problems) > 1:
            self.args = (f"{first.source}: {len(problems)} problems: "
                         + "; ".join(f"{p.field}: {p.value!r} {p.reason}" for p in problems),)

    def __str__(self) -> str:
        return str(self.args[0])
