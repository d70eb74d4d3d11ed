"""Filename and directory templates for SFTP/S3 exports, with path sanitising.

Syntax is Rossum's: ``{name}`` placeholders, ``{{``/``}}`` for literal braces. Variables, in
order of precedence:

1. ``extra`` supplied by the caller (e.g. ``export_order_name`` computed by the engine);
2. legacy ``template_variables`` (``datapoint`` / ``constant`` / ``sequence``);
3. custom ``variables`` of the step (each itself a filename template);
4. built-ins: ``annotation.id`` (``annotation_id``), ``document.id`` (``document_id``),
   ``original_file_name``, ``original_file_stem``, ``original_file_ext`` (``pdf``),
   ``original_file_suffix`` (``.pdf``), ``year``, ``month``, ``day``, ``hour``, ``minute``,
   ``second``, ``date`` (``YYYY-MM-DD``), ``timestamp`` (``YYYYMMDDTHHMMSS``), ``seq_<n>`` and
   any declared sequence;
5. any datapoint by schema id (``{sftp_folder}``, ``{invoice_id}``).

Substituted values never introduce path separators or control characters, the final path has
no ``..`` component, may not leave ``root`` and, for S3, never starts with ``/``. A sequence is
drawn at most once per renderer, so the data file and the document of one annotation share
``{seq_1}`` as in Rossum's legacy SFTP example.
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from rossflow.export.context import ExportContext, to_datapoint_value
from rossflow.export.errors import FilenameError

if TYPE_CHECKING:
    from rossflow.export.config import SequenceSpec, TemplateVariable

__all__ = [
    "FilenameRenderer",
    "SequenceCounter",
    "document_filename",
    "join_remote_path",
    "sanitize_value",
]

Flavor = Literal["sftp", "s3", "local"]
SequenceCounter = Callable[[str], int]
"""Returns the 0-based draw number n of a named sequence; value = start + n * increment."""

_VAR_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_SEQ_RE = re.compile(r"^seq_\d+$")
_MAX_COMPONENT_BYTES = 255
_MAX_DEPTH = 5


def sanitize_value(value: Any) -> str:
    """Text of a substituted value: no separators, no control characters, NFC-normalised."""
    text = unicodedata.normalize("NFC", to_datapoint_value(value))
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] != "C")
    return text.replace("/", "_").replace("\\", "_").strip()


def _check_no_controls(text: str, what: str) -> None:
    if any(unicodedata.category(ch)[0] == "C" for ch in text):
        raise FilenameError(f"{what} contains control characters: {text!r}")


def join_remote_path(
    directory: str, filename: str, *, flavor: Flavor = "sftp", root: str | None = None
) -> str:
    """Join and normalise; reject ``..`` and escapes from ``root``; S3 keys lose the ``/``."""
    for part, what in ((directory, "directory"), (filename, "filename")):
        _check_no_controls(part, what)
        if "\\" in part:
            raise FilenameError(f"{what} may not contain backslashes: {part!r}")
    if not filename or filename.endswith("/"):
        raise FilenameError(f"empty filename (directory {directory!r})")
    combined = f"{directory.rstrip('/')}/{filename}" if directory else filename
    absolute = combined.startswith("/")
    components = []
    for comp in combined.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            raise FilenameError(f"path traversal ('..') in {combined!r}")
        if len(comp.encode("utf-8")) > _MAX_COMPONENT_BYTES:
            raise FilenameError(
                f"path component longer than {_MAX_COMPONENT_BYTES} bytes: {comp[:40]!r}..."
            )
        components.append(comp)
    if not components:
        raise FilenameError(f"empty path from {combined!r}")
    path = "/".join(components)
    if flavor == "s3":
        if root:
            prefix = root.strip("/")
            path = f"{prefix}/{path}" if prefix and not path.startswith(prefix + "/") else path
        return path
    path = ("/" if absolute else "") + path
    if root:
        base = ("/" if root.startswith("/") else "") + root.strip("/")
        if not absolute:
            path = posixpath.join(base, path) if base else path
        prefix = base.rstrip("/") + "/"
        if path != base and not path.startswith(prefix):
            raise FilenameError(f"path {path!r} is outside the target root {base!r}")
    return path


def document_filename(name: str, original_file_name: str | None) -> str:
    """Rossum: a ``document`` export's template has no extension; append the original's."""
    if not original_file_name:
        return name
    suffix = posixpath.splitext(original_file_name)[1]
    if suffix and not name.lower().endswith(suffix.lower()):
        return name + suffix
    return name


class FilenameRenderer:
    """Renders filename/directory templates for one annotation export (not thread-shared)."""

    def __init__(
        self,
        ctx: ExportContext,
        *,
        template_variables: Sequence[TemplateVariable] = (),
        sequences: Mapping[str, SequenceSpec] | None = None,
        counter: SequenceCounter | None = None,
        variables: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        now: datetime | None = None,
        step: str | None = None,
    ) -> None:
        self.ctx = ctx
        self.template_variables = {v.name: v for v in template_variables}
        self.sequences = dict(sequences or {})
        self.counter = counter
        self.variables = dict(variables or {})
        self.extra = dict(extra or {})
        self.now = now or datetime.now(UTC)
        self.step = step
        self._drawn: dict[str, str] = {}

    # -- variables ----------------------------------------------------------------------

    def _sequence(self, name: str) -> str:
        if name in self._drawn:
            return self._drawn[name]
        if self.counter is None:
            raise FilenameError(
                f"{{{name}}} needs a sequence counter (none configured)", step=self.step
            )
        spec = self.sequences.get(name)
        digits, start, increment = (spec.digits, spec.start, spec.increment) if spec else (5, 0, 1)
        var = self.template_variables.get(name)
        if var is not None and var.type == "sequence":
            digits, start, increment = var.digits, var.start, var.increment
        value = start + self.counter(name) * increment
        text = f"{value:0{digits}d}" if value >= 0 else f"-{-value:0{digits}d}"
        self._drawn[name] = text
        return text

    def _builtin(self, name: str) -> Any:
        ctx = self.ctx
        original = ctx.original_file_name or ""
        stem, suffix = posixpath.splitext(original)
        now = self.now
        table: dict[str, Callable[[], Any]] = {
            "annotation.id": lambda: ctx.annotation_id,
            "annotation_id": lambda: ctx.annotation_id,
            "document.id": lambda: ctx.document_id,
            "document_id": lambda: ctx.document_id,
            "original_file_name": lambda: original,
            "original_file_stem": lambda: stem,
            "original_file_ext": lambda: suffix.lstrip("."),
            "original_file_suffix": lambda: suffix,
            "year": lambda: f"{now.year:04d}",
            "month": lambda: f"{now.month:02d}",
            "day": lambda: f"{now.day:02d}",
            "hour": lambda: f"{now.hour:02d}",
            "minute": lambda: f"{now.minute:02d}",
            "second": lambda: f"{now.second:02d}",
            "date": lambda: now.strftime("%Y-%m-%d"),
            "timestamp": lambda: now.strftime("%Y%m%dT%H%M%S"),
        }
        if name in table:
            return table[name]()
        raise KeyError(name)

    def value(self, name: str, depth: int = 0) -> str:
        """Sanitised text of one variable; unknown names raise :class:`FilenameError`."""
        if name in self.extra:
            return sanitize_value(self.extra[name])
        var = self.template_variables.get(name)
        if var is not None:
            if var.type == "sequence":
                return self._sequence(name)
            if var.type == "constant":
                return sanitize_value(var.value or var.default)
            value = self.ctx.value(var.schema_id or "", None)
            return sanitize_value(value if value not in (None, "") else var.default)
        if name in self.variables:
            if depth >= _MAX_DEPTH:
                raise FilenameError(f"variable {name!r} nests too deeply", step=self.step)
            return sanitize_value(self._render(self.variables[name], depth + 1))
        if name in self.sequences or _SEQ_RE.match(name):
            return self._sequence(name)
        try:
            return sanitize_value(self._builtin(name))
        except KeyError:
            pass
        value = self.ctx.value(name, _MISSING)
        if value is not _MISSING:
            return sanitize_value(value)
        raise FilenameError(
            f"unknown variable {{{name}}} (not a built-in, template variable or datapoint)",
            step=self.step,
        )

    # -- rendering ----------------------------------------------------------------------

    def _render(self, template: str, depth: int = 0) -> str:
        def substitute(match: re.Match[str]) -> str:
            piece = match.group(0)
            if piece == "{{":
                return "{"
            if piece == "}}":
                return "}"
            if match.group(1) is None:
                raise FilenameError(f"unbalanced brace in {template!r}", step=self.step)
            name = match.group(1).strip()
            if not name:
                raise FilenameError(f"empty placeholder {{}} in {template!r}", step=self.step)
            return self.value(name, depth)

        return _VAR_RE.sub(substitute, template)

    def render(self, template: str) -> str:
        """Substitute variables (literal ``/`` in the template is kept)."""
        return self._render(template)

    def filename(self, template: str) -> str:
        """A filename: the result may not contain a directory part from a variable."""
        name = self._render(template)
        if not name.strip():
            raise FilenameError(f"filename template {template!r} rendered empty", step=self.step)
        return name

    def path(
        self,
        directory_template: str,
        filename_template: str,
        *,
        flavor: Flavor = "sftp",
        root: str | None = None,
        document_suffix_from: str | None = None,
    ) -> str:
        """Full remote path; ``document_suffix_from`` appends the original's extension."""
        directory = self._render(directory_template or "")
        name = self.filename(filename_template)
        if document_suffix_from is not None:
            name = document_filename(name, document_suffix_from)
        try:
            return join_remote_path(directory, name, flavor=flavor, root=root)
        except FilenameError as exc:
            if self.step:
                exc.with_step(self.step)
            raise


_MISSING: Any = object()
