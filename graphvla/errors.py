"""Errors reported in the user's terms: file, line, column, path in the document, block id."""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable, Sequence


@dataclass(frozen=True)
class Location:
    file: str | None = None
    line: int | None = None  # 1-based
    col: int | None = None  # 1-based

    def __str__(self) -> str:
        parts = [self.file or "<spec>"]
        if self.line is not None:
            parts.append(str(self.line))
            if self.col is not None:
                parts.append(str(self.col))
        return ":".join(parts)


@dataclass
class SpecIssue:
    """One problem in a spec. `path` is the path in the (merged) document, e.g. ('blocks', 'head', 'with')."""

    message: str
    path: tuple = ()
    location: Location | None = None
    block: str | None = None
    hint: str | None = None
    severity: str = "error"  # or "warning"

    @property
    def dotted_path(self) -> str:
        return ".".join(str(p) for p in self.path) or "<root>"

    def format(self) -> str:
        where = str(self.location) if self.location else "<spec>"
        text = f"{where}: {self.severity}: {self.dotted_path}: {self.message}"
        if self.hint:
            text += f" ({self.hint})"
        if self.block:
            text += f" [block {self.block}]"
        return text


class SpecError(Exception):
    """A spec is invalid. Carries every issue found, so users fix them all in one pass."""

    def __init__(self, issues: Sequence[SpecIssue]):
        issues = [i for i in issues if i.severity == "error"] or list(issues)
        # Report in document order: file, then line, then column.
        self.issues = sorted(issues, key=lambda i: (str(i.location.file) if i.location else "",
                                                    (i.location.line or 0) if i.location else 0,
                                                    (i.location.col or 0) if i.location else 0))
        super().__init__(self.format())

    def format(self) -> str:
        n = len(self.issues)
        head = f"{n} error{'s' if n != 1 else ''} in spec:"
        return "\n".join([head] + ["  " + i.format() for i in self.issues])

    def __str__(self) -> str:  # keep str() stable even if issues are edited
        return self.format()


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """'did you mean X?' for the closest choice, or None when nothing is close."""
    choices = [str(c) for c in choices]
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return None


def article(word) -> str:
    """'an image', 'a loss': for messages that name a kind or a type."""
    word = str(word)
    return ("an " if word[:1] in "aeiou" else "a ") + word


def first_line(e: BaseException) -> str:
    """An exception's first line (torch errors carry a C++ backtrace after it), or its type."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def known_list(choices: Iterable[str], limit: int = 30) -> str:
    items = sorted(str(c) for c in choices)
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return "known: " + (", ".join(items[:limit]) + more if items else "none")


@dataclass
class IssueList:
    """Collects issues while checking; `raise_if_errors` turns them into one SpecError."""

    locate: object = None  # callable(path) -> Location | None
    issues: list = field(default_factory=list)

    def add(self, message, path=(), block=None, hint=None, severity="error", location=None):
        path = tuple(path)
        if location is None and self.locate is not None:
            location = self.locate(path)
        self.issues.append(SpecIssue(message, path, location, block, hint, severity))

    @property
    def errors(self):
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self):
        return [i for i in self.issues if i.severity == "warning"]

    def raise_if_errors(self):
        if self.errors:
            raise SpecError(self.errors)
