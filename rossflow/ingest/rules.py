"""Routing rules: which file goes to which Rossum queue, with which metadata and values.

One rule format that also accepts Rossum's scheduled-import ``import_rules`` verbatim::

    # rossflow style: a glob on the path relative to the source directory
    - name: invoices
      pattern: "invoices/*.pdf"          # '*' stays in one folder, '**' crosses folders
      queue_id: 101
      metadata: {"channel": "sftp"}
      values: {"upload:organization_unit": "Sales"}

    # Rossum style (anchors §3.6), pasted as is
    - path: /inbox/receipts
      queue_id: 102
      file_match_regex: ".*\\.pdf"
      result_actions:
        success: [{type: move, path: /inbox/done}]
        failure: [{type: move, path: /inbox/error}]

A file is matched against the rules in order; the first match wins. A rule matches when every
condition it has holds: ``path`` (the file is directly in that folder, or below it with
``recursive: true``; absolute paths are compared with the file's full path, relative ones with
the path below the source directory), ``pattern`` (glob on the relative path) and
``file_match_regex`` (Python ``re.search`` on the file name; anchor it with ``^…$`` for an exact
match). A file no rule matches is left where it is and counted as unrouted.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ResultAction(BaseModel):
    """What to do with a file after the upload (Rossum's ``result_actions`` entries)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["move"] = Field(default="move", description="Only 'move' is supported.")
    path: str = Field(description="Folder (SFTP) or key prefix (S3) to move the file into.")


class ResultActions(BaseModel):
    model_config = ConfigDict(extra="allow")

    success: list[ResultAction] = Field(default_factory=list)
    failure: list[ResultAction] = Field(default_factory=list)


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*`` = any run of characters except ``/``; ``**`` = any number of folders; ``?`` = one
    character except ``/``; ``[...]`` = a character class. Matched against the whole path."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1
                    out.append("(?:.*/)?")  # zero or more folders
                else:
                    out.append(".*")
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1 : j]
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


class RoutingRule(BaseModel):
    """One routing rule (rossflow or Rossum ``import_rules`` format; see the module docs)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    queue_id: int = Field(description="Rossum queue the matching files are uploaded to.")
    name: str | None = Field(default=None, description="Label shown in reports.")
    pattern: str | None = Field(
        default=None,
        description="Glob on the path below the source directory, e.g. 'invoices/*.pdf' or "
        "'receipts/**'.",
    )
    path: str | None = Field(
        default=None,
        description="Folder the file must be in (Rossum import_rules 'path'); absolute or "
        "relative to the source directory.",
    )
    recursive: bool = Field(
        default=False, description="With 'path': also match files in sub-folders."
    )
    file_match_regex: str | None = Field(
        default=None, description="Regex searched in the file name (Rossum import_rules)."
    )
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="Extra annotation metadata for matching files."
    )
    values: dict[str, str] = Field(
        default_factory=dict,
        description="Upload values, e.g. {'upload:organization_unit': 'Sales'}.",
    )
    result_actions: ResultActions | None = Field(
        default=None,
        description="Where to move files after success/failure (Rossum import_rules format); "
        "defaults to the source's archive/failed folders.",
    )

    @field_validator("file_match_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"file_match_regex does not compile: {exc}") from exc
        return value

    @field_validator("values", mode="before")
    @classmethod
    def _values_as_strings(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return {str(k): "" if v is None else str(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _has_a_condition(self) -> RoutingRule:
        if self.pattern is None and self.path is None and self.file_match_regex is None:
            raise ValueError(
                "a routing rule needs at least one of pattern, path or file_match_regex "
                "(use pattern '**' to match everything)"
            )
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        bits = [b for b in (self.path, self.pattern, self.file_match_regex) if b]
        return f"queue {self.queue_id} ({' '.join(bits)})"

    @cached_property
    def _glob(self) -> re.Pattern[str] | None:
        return glob_to_regex(self.pattern.lstrip("/")) if self.pattern else None

    @cached_property
    def _regex(self) -> re.Pattern[str] | None:
        return re.compile(self.file_match_regex) if self.file_match_regex else None

    def matches(self, rel: str, full: str) -> bool:
        """``rel``: path below the source directory; ``full``: the file's full path/key."""
        name = posixpath.basename(rel)
        if self._glob is not None and not self._glob.match(rel):
            return False
        if self._regex is not None and not self._regex.search(name):
            return False
        if self.path is not None:
            if self.path.startswith("/"):
                folder, here = _norm_dir(self.path), posixpath.dirname(_norm_abs(full))
            else:
                folder, here = _norm_rel_dir(self.path), posixpath.dirname(rel)
            if here != folder and not (
                self.recursive and (folder == "" or here.startswith(folder.rstrip("/") + "/"))
            ):
                return False
        return True

    def success_path(self) -> str | None:
        actions = self.result_actions.success if self.result_actions else []
        return actions[0].path if actions else None

    def failure_path(self) -> str | None:
        actions = self.result_actions.failure if self.result_actions else []
        return actions[0].path if actions else None

    def relative_in_rule(self, rel: str) -> str:
        """The part of ``rel`` kept below the rule's own move targets (Rossum style rules keep
        the name; with ``path`` + ``recursive`` the folders below ``path``)."""
        if self.path is not None and not self.path.startswith("/"):
            folder = _norm_rel_dir(self.path)
            if folder and rel.startswith(folder + "/"):
                return rel[len(folder) + 1 :]
        if self.path is not None and not self.recursive:
            return posixpath.basename(rel)
        return rel


def _norm_dir(path: str) -> str:
    norm = posixpath.normpath(path)
    return "/" if norm in ("/", "//") else norm.rstrip("/")


def _norm_abs(path: str) -> str:
    return posixpath.normpath("/" + path.lstrip("/")) if path.startswith("/") else path


def _norm_rel_dir(path: str) -> str:
    norm = posixpath.normpath(path.strip("/")) if path.strip("/") else ""
    return "" if norm == "." else norm


class RuleSet:
    """Ordered routing rules; the first match wins."""

    def __init__(self, rules: Iterable[RoutingRule]) -> None:
        self.rules = list(rules)

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[RoutingRule]:
        return iter(self.rules)

    def route(self, rel: str, full: str | None = None) -> tuple[int, RoutingRule] | None:
        """(index, rule) of the first rule matching the file, or None."""
        for index, rule in enumerate(self.rules):
            if rule.matches(rel, full if full is not None else rel):
                return index, rule
        return None

    def absolute_folders(self) -> list[str]:
        """Folders named by rules with an absolute ``path`` (listed when a source has no
        directory of its own)."""
        return list(
            dict.fromkeys(
                _norm_dir(r.path) for r in self.rules if r.path and r.path.startswith("/")
            )
        )

    @classmethod
    def load(cls, value: Any) -> RuleSet:
        """Accept a RuleSet, a list of rules (dicts or models), ``{"import_rules": [...]}`` or
        ``{"rules": [...]}`` (a whole Rossum scheduled-import configuration works as is)."""
        if isinstance(value, RuleSet):
            return value
        if value is None:
            return cls([])
        if isinstance(value, Mapping):
            if "import_rules" in value:
                value = value["import_rules"]
            elif "rules" in value:
                value = value["rules"]
            else:
                value = [value]
        if not isinstance(value, Sequence) or isinstance(value, str | bytes):
            raise ValueError("routing rules must be a list (or {'import_rules': [...]})")
        rules = [
            r
            if isinstance(r, RoutingRule)
            else RoutingRule.model_validate(r.model_dump() if isinstance(r, BaseModel) else r)
            for r in value
        ]
        return cls(rules)
