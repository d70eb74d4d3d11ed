"""Jinja2 rendering of export files in a sandbox, plus tabular (pandas) outputs.

Compatible with Rossum's custom-format-templating: the variables are ``field``, ``payload``
and ``file`` and the ``b64encode`` filter exists (hosted-engine only in Rossum). Differences,
all deliberate:

* :class:`~jinja2.sandbox.ImmutableSandboxedEnvironment` - ``{{ ''.__class__ }}`` cannot
  reach Python internals and fails loudly instead of rendering an empty string, and templates
  cannot mutate the shared context (``payload.clear()``);
* XML outputs (``format: xml``, an XML content type, or a ``.xml`` key) are **autoescaped**,
  so ``A&B <x>`` becomes ``A&amp;B &lt;x&gt;``. Rossum leaves escaping to ``|e``, a known
  pitfall. ``|safe`` opts out for trusted markup;
* undefined variables raise by default (``undefined: strict``) instead of rendering ``""``
  (typos in schema ids are a top cause of silently wrong exports); ``undefined: lenient``
  restores Rossum's behaviour. ``None`` renders as ``""`` in both modes;
* JSON/XML outputs whose ``format`` is declared are checked for well-formedness.

Every failure becomes :class:`TemplateRenderError` naming the template key and line.
"""

from __future__ import annotations

import base64
import functools
import json
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, Undefined
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup
from markupsafe import escape as markup_escape

from rossflow.export.errors import StepError, TemplateRenderError

if TYPE_CHECKING:
    from rossflow.export.config import TemplateOutput, TemplateStep
    from rossflow.export.context import ExportContext

__all__ = [
    "CONTENT_TYPES",
    "RenderedFile",
    "check_template",
    "compile_template",
    "content_type_for",
    "render",
    "render_step",
    "render_text",
    "wants_autoescape",
]

UndefinedMode = Literal["strict", "lenient"]

CONTENT_TYPES = {
    "xml": "application/xml",
    "json": "application/json",
    "csv": "text/csv",
    "text": "text/plain",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
_EXTENSIONS = {".xml": "xml", ".json": "json", ".csv": "csv", ".txt": "text", ".xlsx": "xlsx"}


@dataclass(frozen=True)
class RenderedFile:
    """One produced artefact, stored under its reference ``key`` for later steps."""

    key: str
    content: bytes
    content_type: str
    encoding: str = "utf-8"
    format: str | None = None

    @property
    def text(self) -> str:
        """Content decoded with its encoding (binary formats: replacement characters)."""
        return self.content.decode(self.encoding if self.format != "xlsx" else "latin-1", "replace")

    @property
    def extension(self) -> str:
        """Suggested file extension (``.xml``, ``.json``...) or ``""``."""
        for ext, fmt in _EXTENSIONS.items():
            if fmt == self.format:
                return ext
        return ""


def _security_aware(base: type[Undefined]) -> type[Undefined]:
    """Undefined that always raises when it stands for a blocked (unsafe) access."""

    class _Undefined(base):  # type: ignore[valid-type,misc]
        __slots__ = ()

        def _blocked(self) -> bool:
            return self._undefined_exception is SecurityError

        def __str__(self) -> str:
            if self._blocked():
                self._fail_with_undefined_error()
            return super().__str__()

        def __iter__(self) -> Any:
            if self._blocked():
                self._fail_with_undefined_error()
            return super().__iter__()

        def __bool__(self) -> bool:
            if self._blocked():
                self._fail_with_undefined_error()
            return super().__bool__()

    _Undefined.__name__ = f"Safe{base.__name__}"
    return _Undefined


_LENIENT = _security_aware(Undefined)
_STRICT = _security_aware(StrictUndefined)


def _b64encode(value: Any, encoding: str = "utf-8") -> str:
    if isinstance(value, Undefined) or value is None:
        raise TypeError("b64encode needs bytes or text, got nothing")
    data = value if isinstance(value, (bytes, bytearray)) else str(value).encode(encoding)
    return base64.b64encode(bytes(data)).decode("ascii")


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)


def _xml_escape(value: Any) -> Markup:
    if value is None:
        return Markup("")
    text = str(value)
    return Markup(  # noqa: S704 - the text is escaped right here
        text.replace("&", "&amp;")
        .replace("<", "&lt;")
        .replace(">", "&gt;")
        .replace('"', "&quot;")
        .replace("'", "&apos;")
    )


def _finalize(value: Any) -> Any:
    return "" if value is None else value


MAX_REPEAT = 1_000_000
MAX_EXPONENT = 1_000


class _ExportEnvironment(ImmutableSandboxedEnvironment):
    """Sandbox that also bounds ``'x' * n`` and ``a ** b`` (memory/CPU exhaustion)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, (int, float)) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, count in ((left, right), (right, left)):
                if (
                    isinstance(seq, (str, list, tuple))
                    and isinstance(count, int)
                    and len(seq) * count > MAX_REPEAT
                ):
                    raise SecurityError(f"repetition result longer than {MAX_REPEAT}")
        return super().call_binop(context, operator, left, right)


@functools.lru_cache(maxsize=8)
def _environment(
    autoescape: bool, strict: bool, rossum: bool = False
) -> ImmutableSandboxedEnvironment:
    if rossum:
        # Rossum's templating runs a plain ``jinja2.Environment()``: the trailing newline is
        # dropped, ``None`` prints as "None" and ``tojson`` is Jinja's HTML-safe ASCII JSON.
        env = _ExportEnvironment(autoescape=autoescape, undefined=_LENIENT, extensions=[])
        env.filters["b64encode"] = _b64encode
        env.filters["xml_escape"] = _xml_escape
        return env
    env = _ExportEnvironment(
        autoescape=autoescape,
        undefined=_STRICT if strict else _LENIENT,
        finalize=_finalize,
        keep_trailing_newline=True,
        extensions=[],
    )
    env.filters["b64encode"] = _b64encode
    env.filters["tojson"] = _tojson
    env.filters["xml_escape"] = _xml_escape
    env.filters["e"] = markup_escape
    return env


def _marker(key: str) -> str:
    return f"<template {key}>"


@functools.lru_cache(maxsize=256)
def compile_template(
    text: str, *, key: str, autoescape: bool, strict: bool = True, rossum: bool = False
) -> Template:
    """Compile (cached); syntax errors raise :class:`TemplateRenderError` with the line."""
    env = _environment(autoescape, strict, rossum)
    try:
        code = env.compile(text, name=key, filename=_marker(key))
    except TemplateSyntaxError as exc:
        raise TemplateRenderError(
            f"syntax error: {exc.message}", template_key=key, lineno=exc.lineno
        ) from exc
    return env.template_class.from_code(env, code, env.make_globals(None))


def check_template(text: str, *, key: str, autoescape: bool = False) -> None:
    """Validate template syntax at config-load time."""
    compile_template(text, key=key, autoescape=autoescape, strict=True)


def _runtime_lineno(exc: BaseException, key: str) -> int | None:
    lineno = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == _marker(key):
            lineno = frame.lineno
    return lineno


def render_text(
    text: str,
    variables: Mapping[str, Any],
    *,
    key: str = "<inline>",
    autoescape: bool = False,
    undefined: UndefinedMode = "strict",
    step: str | None = None,
    rossum: bool = False,
) -> str:
    """Render a template string in the sandbox; every failure is a TemplateRenderError.

    ``rossum`` renders with the semantics of Rossum's own Jinja environment (imported hooks).
    """
    template = compile_template(
        text, key=key, autoescape=autoescape, strict=undefined == "strict", rossum=rossum
    )
    try:
        return template.render(dict(variables))
    except TemplateRenderError:
        raise
    except StepError as exc:  # e.g. original file unavailable
        raise TemplateRenderError(
            exc.reason, template_key=key, lineno=_runtime_lineno(exc, key), step=step
        ) from exc
    except SecurityError as exc:
        raise TemplateRenderError(
            f"blocked by the sandbox: {exc}",
            template_key=key,
            lineno=_runtime_lineno(exc, key),
            step=step,
        ) from exc
    except TemplateError as exc:
        raise TemplateRenderError(
            f"{type(exc).__name__}: {exc}",
            template_key=key,
            lineno=_runtime_lineno(exc, key),
            step=step,
        ) from exc
    except Exception as exc:
        raise TemplateRenderError(
            f"{type(exc).__name__}: {exc}",
            template_key=key,
            lineno=_runtime_lineno(exc, key),
            step=step,
        ) from exc


def output_format(output: TemplateOutput) -> str | None:
    """Declared or inferred format (xml/json/csv/text/xlsx) of an output."""
    if output.tabular:
        return output.tabular
    if output.format:
        return output.format
    ctype = (output.content_type or "").lower()
    for fmt in ("xml", "json", "csv"):
        if fmt in ctype:
            return fmt
    for ext, fmt in _EXTENSIONS.items():
        if output.key.lower().endswith(ext):
            return fmt
    # Rossum configs rarely say what they produce; a template that starts with markup is XML.
    if output.template_text.lstrip().startswith("<"):
        return "xml"
    return None


def wants_autoescape(output: TemplateOutput) -> bool:
    """XML outputs autoescape unless the output says otherwise (Rossum's dialect never does)."""
    if output.autoescape is not None:
        return output.autoescape
    if output.jinja == "rossum":
        return False
    return output_format(output) == "xml"


def content_type_for(output: TemplateOutput) -> str:
    """Explicit content type, else derived from the format (``text/plain`` fallback)."""
    if output.content_type and "/" in output.content_type:
        return output.content_type
    return CONTENT_TYPES.get(output_format(output) or "text", "text/plain")


def _check_wellformed(text: str, fmt: str | None, key: str) -> None:
    if fmt == "json":
        try:
            json.loads(text)
        except json.JSONDecodeError as exc:
            raise TemplateRenderError(
                f"rendered output is not valid JSON: {exc.msg} (column {exc.colno})",
                template_key=key,
                lineno=exc.lineno,
            ) from exc
    elif fmt == "xml":
        from lxml import etree

        parser = etree.XMLParser(resolve_entities=False, no_network=True)
        try:
            etree.fromstring(text.encode("utf-8"), parser=parser)
        except etree.XMLSyntaxError as exc:
            line = exc.lineno if isinstance(exc.lineno, int) else None
            raise TemplateRenderError(
                f"rendered output is not well-formed XML: {exc.msg}",
                template_key=key,
                lineno=line,
            ) from exc


def _render_tabular(output: TemplateOutput, context: ExportContext) -> bytes:
    from rossflow.export.tabular import annotation_rows, frame_to_csv, frame_to_xlsx, rows_to_frame

    meta: dict[str, Any] = {}
    if output.include_meta:
        meta = {
            "annotation_id": context.annotation_id,
            "document_id": context.document_id,
            "file_name": context.original_file_name,
        }
    typed = output.tabular == "xlsx"
    rows = annotation_rows(
        context.content, table=output.table, columns=output.columns, meta=meta, typed=typed
    )
    frame = rows_to_frame(rows, columns=output.columns, rename=output.rename)
    if output.tabular == "xlsx":
        return frame_to_xlsx(frame, sheet_name=output.sheet_name)
    return frame_to_csv(
        frame,
        delimiter=output.delimiter,
        encoding=output.content_encoding,
        escape_formulas=output.escape_formulas,
    )


def render(
    output: TemplateOutput | TemplateStep, context: ExportContext, *, step: str | None = None
) -> RenderedFile:
    """Render one output (or the single output of a template step) for one annotation."""
    from rossflow.export.config import TemplateStep

    if isinstance(output, TemplateStep):
        if len(output.outputs) != 1:
            raise ValueError("render() needs a single output; use render_step() for several")
        step = step or output.name
        output = output.outputs[0]
    fmt = output_format(output)
    ctype = content_type_for(output)
    if output.tabular:
        try:
            data = _render_tabular(output, context)
        except (ValueError, LookupError, UnicodeError) as exc:
            raise TemplateRenderError(str(exc), template_key=output.key, step=step) from exc
        return RenderedFile(output.key, data, ctype, output.content_encoding, fmt)

    text = render_text(
        output.template_text,
        context.template_vars(),
        key=output.key,
        autoescape=wants_autoescape(output),
        undefined=output.undefined,
        step=step,
        rossum=output.jinja == "rossum",
    )
    if output.validate_output and output.format in ("json", "xml"):
        _check_wellformed(text, output.format, output.key)
    try:
        data = text.encode(output.content_encoding)
    except UnicodeEncodeError as exc:
        raise TemplateRenderError(
            f"character {exc.object[exc.start : exc.end]!r} cannot be encoded as "
            f"{output.content_encoding}",
            template_key=output.key,
            lineno=text.count("\n", 0, exc.start) + 1,
            step=step,
        ) from exc
    except LookupError as exc:
        raise TemplateRenderError(
            f"unknown content_encoding {output.content_encoding!r}",
            template_key=output.key,
            step=step,
        ) from exc
    return RenderedFile(output.key, data, ctype, output.content_encoding, fmt)


def render_step(step: TemplateStep, context: ExportContext) -> list[RenderedFile]:
    """Render every output of a template step (Rossum: up to five ``export_configs``)."""
    return [render(output, context, step=step.name) for output in step.outputs]
