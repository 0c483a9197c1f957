"""Gitignore-style include/exclude patterns: compiled once, matched against paths below a scanned root.

Pure: the agent's scanner matches with them, the server validates patterns
with them where an admin enters them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bkup.errors import UsageError


class PatternError(UsageError):
    pass


@dataclass(frozen=True, slots=True)
class Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool
    anchored: bool  # matched against the path below the root, else against the name


def _translate_segment(seg: str) -> str:
    """One path component of a glob as a regex: `*`, `?`, `[..]` never match '/'."""
    out: list[str] = []
    i, n = 0, len(seg)
    while i < n:
        c = seg[i]
        if c == "*":
            while i + 1 < n and seg[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(seg[i]))
        elif c == "[":
            j = i + 1
            if j < n and seg[j] in "!^":
                j += 1
            if j < n and seg[j] == "]":
                j += 1
            while j < n and seg[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal '['
                out.append(re.escape(c))
            else:
                body = seg[i + 1 : j]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\").replace("[", "\\[")
                out.append(f"[^/{body}]" if negate else f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


def compile_pattern(pattern: str) -> Rule | None:
    """A gitignore-style pattern as a rule; None for blank lines and comments."""
    if not pattern.strip() or pattern.startswith("#"):
        return None
    negate = pattern.startswith("!")
    if negate:
        pattern = pattern[1:]
    elif pattern.startswith("\\!") or pattern.startswith("\\#"):
        pattern = pattern[1:]
    dir_only = pattern.endswith("/")
    pattern = pattern.rstrip("/")
    if not pattern:
        return None
    anchored = "/" in pattern
    pattern = pattern.lstrip("/")
    if not anchored:
        return Rule(re.compile(_translate_segment(pattern), re.DOTALL), negate, dir_only, anchored=False)
    segments = pattern.split("/")
    parts: list[str] = []
    need_sep = False  # the previous piece ended in a component, so a '/' comes next
    for k, seg in enumerate(segments):
        if seg == "**":
            if k > 0 and segments[k - 1] == "**":
                continue
            if k == len(segments) - 1:
                parts.append("/.*" if need_sep else ".*")  # "a/**": everything inside a
            else:
                parts.append("/(?:.*/)?" if need_sep else "(?:.*/)?")  # zero or more directories
            need_sep = False
            continue
        if need_sep:
            parts.append("/")
        parts.append(_translate_segment(seg))
        need_sep = True
    return Rule(re.compile("".join(parts), re.DOTALL), negate, dir_only, anchored=True)


class Excludes:
    """An ordered list of gitignore-style patterns; the last one that matches decides."""

    def __init__(self, patterns: list[str] | tuple[str, ...] = ()) -> None:
        self.patterns = list(patterns)
        self._rules = compile_patterns(self.patterns)

    def __bool__(self) -> bool:
        return bool(self._rules)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """`rel`: the path below the scanned root, without a leading '/' (file system str)."""
        name = rel.rpartition("/")[2]
        verdict = False
        for rule in self._rules:
            if rule.dir_only and not is_dir:
                continue
            if rule.regex.fullmatch(rel if rule.anchored else name):
                verdict = not rule.negate
        return verdict


def compile_patterns(patterns: list[str] | tuple[str, ...]) -> list[Rule]:
    """Compile a list of patterns, naming the first bad one."""
    rules = []
    for pattern in patterns:
        if "\0" in pattern or "\n" in pattern:
            raise PatternError(f"pattern {pattern!r}: NUL and newline are not allowed")
        try:
            rule = compile_pattern(pattern)
        except re.error as exc:
            raise PatternError(f"pattern {pattern!r} is invalid: {exc}") from None
        if rule is not None:
            rules.append(rule)
    return rules
