"""Pipeline configuration: pydantic models, DAG validation and loaders.

One model, two inputs:

* our native YAML (see ``rossflow/export/README.md``), strict - unknown keys are errors;
* Rossum v1 hosted-extension hooks verbatim (``[{"name", "settings", "run_after", ...}]`` as
  returned by ``GET /v1/hooks``); the step type is inferred from the settings keys, unknown
  keys are preserved in ``step.extra`` and reported in ``PipelineConfig.warnings``.

Everything that can be checked before the first annotation is exported is checked at load
time: unique names, ``after`` references, cycles, Jinja syntax, safe conditions, JMESPath /
XPath / regex syntax, and that every ``export_reference_key`` consumed by a step is produced
by an *ancestor* step (Rossum's order-by-hook-name chains fail silently at run time instead).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import jmespath
import jmespath.exceptions
import yaml
from lxml import etree
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from rossflow.export.errors import ConfigError, TemplateRenderError
from rossflow.export.evaluate import compile_condition
from rossflow.export.templating import check_template, wants_autoescape

__all__ = [
    "AuthConfig",
    "CleanStep",
    "Defaults",
    "EvaluateStep",
    "ExportObject",
    "ExportRule",
    "ExtractRule",
    "ExtractSource",
    "ExtractStep",
    "FileStorageStep",
    "PipelineConfig",
    "RestRequest",
    "RestStep",
    "S3Step",
    "SequenceSpec",
    "SftpStep",
    "StatusCodeResolver",
    "Step",
    "TemplateOutput",
    "TemplateStep",
    "TemplateVariable",
    "dump_native",
    "from_rossum_hooks",
    "load_pipeline",
]

Collision = Literal["replace", "skip", "error", "rename"]
HttpMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
_STATUS_PATTERN = re.compile(r"^[1-5]xx$")


def _collision(value: Any) -> Any:
    """Accept the Request Processor form ``{"replace": true|false}`` too."""
    if isinstance(value, Mapping) and "replace" in value:
        return "replace" if value["replace"] else "error"
    return value


CollisionField = Annotated[Collision, BeforeValidator(_collision)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=False)


# --------------------------------------------------------------------------------- steps


class StepBase(_Model):
    """Fields shared by every step."""

    name: str = Field(min_length=1)
    after: list[str] = Field(
        default_factory=list, validation_alias=AliasChoices("after", "run_after")
    )
    description: str | None = None
    when: str | None = Field(
        default=None, description="Safe expression; the step is skipped when it is false."
    )
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Unknown keys preserved from Rossum v1 input."
    )

    @field_validator("when")
    @classmethod
    def _check_when(cls, value: str | None) -> str | None:
        if value:
            compile_condition(value)
        return value


class CleanStep(StepBase):
    """Rossum's "custom format templating purge": drop artefacts of earlier runs first."""

    type: Literal["clean"] = "clean"
    keys: list[str] | None = Field(
        default=None, description="Reference keys to purge; all export artefacts when unset."
    )


class TemplateOutput(_Model):
    """One rendered file (Rossum ``export_configs`` entry) or a tabular CSV/XLSX export."""

    key: str = Field(min_length=1, validation_alias=AliasChoices("key", "export_reference_key"))
    template: str | None = Field(
        default=None, validation_alias=AliasChoices("template", "file_content_template")
    )
    template_multiline: list[str] | None = Field(
        default=None,
        validation_alias=AliasChoices("template_multiline", "file_content_template_multiline"),
    )
    tabular: Literal["csv", "xlsx"] | None = None
    content_encoding: str = "utf-8"
    content_type: str | None = None
    format: Literal["xml", "json", "csv", "text"] | None = None
    autoescape: bool | None = None
    undefined: Literal["strict", "lenient"] = "strict"
    validate_output: bool = True
    # tabular options
    table: str | None = None
    columns: list[str] | None = None
    rename: dict[str, str] | None = None
    delimiter: str = ","
    include_meta: bool = False
    sheet_name: str = "export"
    escape_formulas: bool = False

    @property
    def template_text(self) -> str:
        """Template source; multiline rows are joined with ``\\n`` as Rossum does."""
        if self.template is not None:
            return self.template
        return "\n".join(self.template_multiline or [])

    @model_validator(mode="after")
    def _check(self) -> TemplateOutput:
        given = [
            n for n in ("template", "template_multiline", "tabular") if getattr(self, n) is not None
        ]
        if len(given) != 1:
            raise ValueError(
                f"output {self.key!r}: give exactly one of template, template_multiline or "
                f"tabular (got {', '.join(given) or 'none'})"
            )
        try:
            "".encode(self.content_encoding)
        except LookupError as exc:
            raise ValueError(
                f"output {self.key!r}: unknown encoding {self.content_encoding!r}"
            ) from exc
        if self.tabular is None:
            try:
                check_template(self.template_text, key=self.key, autoescape=wants_autoescape(self))
            except TemplateRenderError as exc:
                raise ValueError(str(exc)) from exc
        return self


_OUTPUT_KEYS = set(TemplateOutput.model_fields) | {
    "export_reference_key",
    "file_content_template",
    "file_content_template_multiline",
}


class TemplateStep(StepBase):
    """Custom format templating: renders one or more files stored under reference keys.

    Shorthand: the fields of a single :class:`TemplateOutput` may be given on the step itself.
    """

    type: Literal["template"] = "template"
    outputs: list[TemplateOutput] = Field(
        min_length=1, validation_alias=AliasChoices("outputs", "export_configs")
    )

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "outputs" not in data and "export_configs" not in data:
            inline = {k: v for k, v in data.items() if k in _OUTPUT_KEYS and k != "name"}
            if inline:
                rest = {k: v for k, v in data.items() if k not in inline}
                rest["outputs"] = [inline]
                return rest
        return data


class StatusCodeResolver(_Model):
    """Rossum's ``status_code_resolver``: explicit error and warning codes."""

    error: list[int] = Field(default_factory=list)
    warning: list[int] = Field(default_factory=list)


class AuthConfig(_Model):
    """OAuth2-style token request (Rossum ``auth``); the token becomes ``{secret.<cache_as>}``."""

    url: str
    method: HttpMethod = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    body: Literal["form", "json"] | None = None
    token_path: str = "access_token"  # noqa: S105 - a JMESPath, not a secret
    expires_in_path: str = "expires_in"
    cache_as: str = "access_token"
    timeout_s: float = 30.0

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def body_kind(self) -> Literal["form", "json"]:
        """Form-encoded unless told (or a JSON Content-Type header) otherwise."""
        if self.body:
            return self.body
        ctype = {k.lower(): v for k, v in self.headers.items()}.get("content-type", "")
        return "json" if "json" in ctype.lower() else "form"


class RestRequest(_Model):
    """HTTP request of a REST step; strings may hold placeholders (see placeholders.py)."""

    url: str
    method: HttpMethod = "POST"
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)
    body: Literal["raw", "json", "form", "multipart", "none"] | None = None
    content: Any = None
    file_name: str | None = None
    file_key: str | None = None
    request_data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @property
    def body_kind(self) -> Literal["raw", "json", "form", "multipart", "none"]:
        """Declared body kind, else inferred the way Rossum's examples use the fields."""
        if self.body:
            return self.body
        if self.file_key or self.file_name:
            return "multipart"
        if self.content is None:
            return "none"
        if isinstance(self.content, (dict, list)):
            ctype = {k.lower(): v for k, v in self.headers.items()}.get("content-type", "")
            return "form" if "x-www-form-urlencoded" in ctype.lower() else "json"
        return "raw"


class RestStep(StepBase):
    """REST API export (Rossum v1 ``request`` hook) with explicit success semantics.

    Rossum treats *every* status as success unless listed in ``status_code_resolver``. Here a
    status is: ``error`` if listed there, ``warning`` if listed there, ``success`` if it matches
    ``success_codes`` (default ``2xx``), and ``error`` otherwise - unless
    ``rossum_compat_any_status_is_success`` restores Rossum's behaviour.
    """

    type: Literal["rest"] = "rest"
    export_reference_key: str | None = None
    request: RestRequest
    auth: AuthConfig | str | None = None
    condition: str | None = Field(
        default=None, description="Rossum gate, e.g. '@{api_gate}': skip if empty or 'false'."
    )
    status_code_resolver: StatusCodeResolver = Field(default_factory=StatusCodeResolver)
    success_codes: list[int | str] | None = None
    rossum_compat_any_status_is_success: bool = False
    response_headers_reference_key: str | None = None
    response_payload_reference_key: str | None = None
    mode: Literal["wait", "retry"] | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    retries: int | None = Field(default=None, ge=0, le=10)
    target: str | None = None

    @field_validator("success_codes")
    @classmethod
    def _codes(cls, value: list[int | str] | None) -> list[int | str] | None:
        for code in value or []:
            if isinstance(code, int):
                if not 100 <= code <= 599:
                    raise ValueError(f"invalid HTTP status {code}")
            elif not _STATUS_PATTERN.match(str(code).lower()):
                raise ValueError(f"invalid status pattern {code!r} (use e.g. 201 or '2xx')")
        return value

    def classify_status(self, status_code: int) -> Literal["success", "warning", "error"]:
        """Outcome of a reply status for this step (see the class docstring)."""
        if status_code in self.status_code_resolver.error:
            return "error"
        if status_code in self.status_code_resolver.warning:
            return "warning"
        if self.rossum_compat_any_status_is_success:
            return "success"
        for code in self.success_codes or ["2xx"]:
            if isinstance(code, int) and code == status_code:
                return "success"
            if isinstance(code, str) and str(status_code)[0] == code[0]:
                return "success"
        return "error"


class ExportObject(_Model):
    """One file written by a file-storage rule (Rossum ``export_object_configurations``)."""

    type: Literal["annotation_content", "document", "custom_format"]
    format: Literal["json", "xml", "csv", "xlsx"] | None = None
    filename_template: str = Field(min_length=1)
    export_reference_key: str | None = None
    filename_collision: CollisionField | None = None

    @model_validator(mode="after")
    def _check(self) -> ExportObject:
        if self.type == "annotation_content" and self.format is None:
            raise ValueError("annotation_content needs 'format' (json, xml, csv or xlsx)")
        if self.type == "custom_format" and not self.export_reference_key:
            raise ValueError("custom_format needs 'export_reference_key'")
        return self


class ExportRule(_Model):
    """A directory and the objects written into it."""

    path_to_directory: str = "/"
    export_object_configurations: list[ExportObject] = Field(
        min_length=1, validation_alias=AliasChoices("export_object_configurations", "objects")
    )
    filename_collision: CollisionField | None = None


class SequenceSpec(_Model):
    """A ``{seq_N}`` counter: zero-padded ``digits``, ``start`` + n * ``increment``."""

    digits: int = Field(default=5, ge=1, le=20)
    start: int = 0
    increment: int = 1


class TemplateVariable(_Model):
    """Legacy SFTP export ``template_variables`` entry."""

    name: str
    type: Literal["datapoint", "sequence", "constant"] = "datapoint"
    schema_id: str | None = None
    value: str | None = None
    default: str = ""
    digits: int = Field(default=5, ge=1, le=20)
    start: int = 0
    increment: int = 1

    @model_validator(mode="after")
    def _check(self) -> TemplateVariable:
        if self.type == "datapoint" and not self.schema_id:
            raise ValueError(f"template variable {self.name!r}: datapoint needs schema_id")
        return self


class FileStorageStep(StepBase):
    """SFTP/S3 export (Rossum file-storage ``export_rules`` or the legacy SFTP extension)."""

    target: str | None = Field(
        default=None, description="Name of the SFTP/S3 target block defined elsewhere."
    )
    credentials: dict[str, Any] = Field(default_factory=dict)
    export_rules: list[ExportRule] = Field(min_length=1)
    filename_collision: CollisionField | None = None
    template_variables: list[TemplateVariable] = Field(default_factory=list)
    sequences: dict[str, SequenceSpec] = Field(default_factory=dict)
    variables: dict[str, str] = Field(
        default_factory=dict, description="Custom filename variables (themselves templates)."
    )

    def sequence_specs(self) -> dict[str, SequenceSpec]:
        """Declared sequences, including legacy ``template_variables`` of type sequence."""
        specs = dict(self.sequences)
        for var in self.template_variables:
            if var.type == "sequence":
                specs[var.name] = SequenceSpec(
                    digits=var.digits, start=var.start, increment=var.increment
                )
        return specs


class SftpStep(FileStorageStep):
    """Upload to an SFTP server."""

    type: Literal["sftp"] = "sftp"


class S3Step(FileStorageStep):
    """Upload to an S3 bucket (keys never start with a slash)."""

    type: Literal["s3"] = "s3"


class ExtractRule(_Model):
    """One value to extract; ``value_path`` is Rossum's name for a JMESPath."""

    target_schema_id: str = Field(min_length=1)
    value_path: str | None = Field(
        default=None, validation_alias=AliasChoices("value_path", "jmespath")
    )
    xpath: str | None = None
    regex: str | None = None
    required: bool = False
    default: Any = None

    @model_validator(mode="after")
    def _check(self) -> ExtractRule:
        given = [n for n in ("value_path", "xpath", "regex") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(
                f"rule -> {self.target_schema_id}: give exactly one of value_path/jmespath, "
                "xpath or regex"
            )
        try:
            if self.value_path:
                jmespath.compile(self.value_path)
            elif self.xpath:
                etree.XPath(self.xpath)
            elif self.regex:
                re.compile(self.regex)
        except (jmespath.exceptions.JMESPathError, etree.XPathSyntaxError, re.error) as exc:
            raise ValueError(f"rule -> {self.target_schema_id}: invalid {given[0]}: {exc}") from exc
        return self


class ExtractSource(_Model):
    """Where rules read from: a stored artefact (Rossum) or a REST step's reply record."""

    source_reference_key: str | None = None
    source_step: str | None = None
    format: Literal["json", "xml", "text"] = "json"
    condition: str | None = None
    namespaces: dict[str, str] = Field(default_factory=dict)
    extract_rules: list[ExtractRule] = Field(
        min_length=1, validation_alias=AliasChoices("extract_rules", "rules")
    )

    @model_validator(mode="after")
    def _check(self) -> ExtractSource:
        if bool(self.source_reference_key) == bool(self.source_step):
            raise ValueError("give exactly one of source_reference_key or source_step")
        if self.format == "xml" and any(r.value_path for r in self.extract_rules):
            raise ValueError("JMESPath rules need format json (use xpath for xml sources)")
        return self


class ExtractStep(StepBase):
    """Data value extractor. Extracted values are written back to ``target_schema_id``
    datapoints (``writeback``), so write-back is folded into this step."""

    type: Literal["extract"] = "extract"
    sources: list[ExtractSource] = Field(
        min_length=1, validation_alias=AliasChoices("sources", "extract")
    )
    writeback: bool = True


class EvaluateStep(StepBase):
    """Export evaluator: fails the export when ``condition`` is true (Rossum semantics) or when
    ``require`` is false. ``message`` is a Jinja template over the same variables."""

    type: Literal["evaluate"] = "evaluate"
    condition: str | None = None
    require: str | None = None
    message: str | None = None
    level: Literal["error", "warning"] = "error"

    @model_validator(mode="after")
    def _check(self) -> EvaluateStep:
        if bool(self.condition) == bool(self.require):
            raise ValueError(
                f"evaluate step {self.name!r}: give exactly one of condition or require"
            )
        compile_condition(self.condition or self.require or "")
        if self.message:
            try:
                check_template(self.message, key=f"{self.name}.message")
            except TemplateRenderError as exc:
                raise ValueError(str(exc)) from exc
        return self

    @property
    def expression(self) -> str:
        """The expression text, whichever field holds it."""
        return self.condition or self.require or ""

    @property
    def fails_when_true(self) -> bool:
        """``condition`` fails on true; ``require`` fails on false."""
        return self.condition is not None


Step = Annotated[
    CleanStep | TemplateStep | RestStep | SftpStep | S3Step | ExtractStep | EvaluateStep,
    Field(discriminator="type"),
]


class Defaults(_Model):
    """Pipeline-wide defaults applied to steps that leave a field unset."""

    timeout_s: float = Field(default=120.0, gt=0)
    mode: Literal["wait", "retry"] = "wait"
    retries: int = Field(default=3, ge=0, le=10)
    success_codes: list[int | str] = Field(default_factory=lambda: list[int | str](["2xx"]))
    filename_collision: CollisionField = "replace"


# ------------------------------------------------------------------------------ pipeline


class PipelineConfig(_Model):
    """A validated export pipeline: steps forming a DAG through ``after``."""

    name: str = Field(min_length=1)
    description: str | None = None
    version: Literal[1] = 1
    defaults: Defaults = Field(default_factory=Defaults)
    auths: dict[str, AuthConfig] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)
    origin: Literal["native", "rossum_v1"] = "native"
    warnings: list[str] = Field(default_factory=list)

    # -- graph helpers ------------------------------------------------------------------

    def step(self, name: str) -> Step:
        """Step by name (KeyError when absent)."""
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def topological_order(self) -> list[Step]:
        """Steps so that every step follows its ``after``; ties keep declaration order."""
        index = {s.name: i for i, s in enumerate(self.steps)}
        remaining = {s.name: set(s.after) for s in self.steps}
        order: list[Step] = []
        while remaining:
            ready = sorted((n for n, deps in remaining.items() if not deps), key=index.__getitem__)
            if not ready:  # pragma: no cover - validation rejects cycles
                raise ConfigError("cycle in steps", [", ".join(sorted(remaining))])
            first = ready[0]
            order.append(self.steps[index[first]])
            del remaining[first]
            for deps in remaining.values():
                deps.discard(first)
        return order

    def ancestors(self, name: str) -> set[str]:
        """All steps that must run before ``name``."""
        by_name = {s.name: s for s in self.steps}
        seen: set[str] = set()
        stack = list(by_name[name].after)
        while stack:
            current = stack.pop()
            if current in seen or current not in by_name:
                continue
            seen.add(current)
            stack.extend(by_name[current].after)
        return seen

    def produced_keys(self) -> dict[str, str]:
        """Reference key -> producing step name."""
        produced: dict[str, str] = {}
        for step in self.steps:
            for key in _produces(step):
                produced.setdefault(key, step.name)
        return produced

    # -- validation -------------------------------------------------------------------

    @model_validator(mode="after")
    def _validate_graph(self) -> PipelineConfig:
        problems: list[str] = []
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"duplicate step names: {', '.join(dupes)}")
        known = set(names)
        for step in self.steps:
            for dep in step.after:
                if dep == step.name:
                    problems.append(f"step {step.name!r} lists itself in 'after'")
                elif dep not in known:
                    problems.append(f"step {step.name!r}: 'after' refers to unknown step {dep!r}")
        if not problems:
            cycle = _find_cycle({s.name: list(s.after) for s in self.steps})
            if cycle:
                problems.append("cycle in step dependencies: " + " -> ".join(cycle))
        if problems:
            raise ConfigError("invalid pipeline graph", problems)

        self._apply_defaults()
        soft: list[str] = []
        hard: list[str] = []
        self._check_references(hard, soft)
        if self.origin == "rossum_v1":
            soft.extend(hard)
            hard = []
        if hard:
            raise ConfigError("invalid pipeline", hard)
        for message in soft:
            if message not in self.warnings:
                self.warnings.append(message)
        return self

    def _apply_defaults(self) -> None:
        d = self.defaults
        for step in self.steps:
            if isinstance(step, RestStep):
                if step.mode is None:
                    step.mode = d.mode
                if step.timeout_s is None:
                    step.timeout_s = d.timeout_s
                if step.retries is None:
                    step.retries = d.retries if step.mode == "retry" else 0
                if step.success_codes is None:
                    step.success_codes = list(d.success_codes)
            elif isinstance(step, FileStorageStep) and step.filename_collision is None:
                step.filename_collision = d.filename_collision

    def _check_references(self, hard: list[str], soft: list[str]) -> None:
        produced: dict[str, str] = {}
        for step in self.steps:
            for key in _produces(step):
                if key in produced and produced[key] != step.name:
                    hard.append(
                        f"reference key {key!r} is produced by both {produced[key]!r} and "
                        f"{step.name!r}"
                    )
                produced.setdefault(key, step.name)
        by_name = {s.name: s for s in self.steps}
        for step in self.steps:
            ancestors = self.ancestors(step.name)
            for key in _consumes(step):
                producer = produced.get(key)
                if producer is None:
                    hard.append(
                        f"step {step.name!r} uses reference key {key!r} that no step produces"
                    )
                elif producer not in ancestors:
                    hard.append(
                        f"step {step.name!r} uses {key!r} from {producer!r} but does not run "
                        f"after it (add {producer!r} to 'after')"
                    )
            if isinstance(step, RestStep):
                if not step.request.url.strip():
                    hard.append(f"step {step.name!r}: request.url is empty")
                if isinstance(step.auth, AuthConfig) and not step.auth.url.strip():
                    hard.append(f"step {step.name!r}: auth.url is empty")
            if (
                isinstance(step, RestStep)
                and isinstance(step.auth, str)
                and step.auth not in self.auths
            ):
                hard.append(
                    f"step {step.name!r}: unknown auth {step.auth!r} "
                    f"(defined: {', '.join(sorted(self.auths)) or 'none'})"
                )
            if isinstance(step, ExtractStep):
                for source in step.sources:
                    if source.source_step is None:
                        continue
                    ref = by_name.get(source.source_step)
                    if not isinstance(ref, RestStep):
                        hard.append(
                            f"step {step.name!r}: source_step {source.source_step!r} "
                            "is not a rest step"
                        )
                    elif ref.name not in ancestors:
                        hard.append(
                            f"step {step.name!r} reads the reply of {ref.name!r} but "
                            f"does not run after it"
                        )
            for text in _conditions(step):
                for ref_step in compile_condition(text).referenced_steps:
                    if ref_step not in by_name:
                        hard.append(
                            f"step {step.name!r}: condition refers to unknown step "
                            f"responses.{ref_step}"
                        )
                    elif ref_step not in ancestors:
                        hard.append(
                            f"step {step.name!r}: condition reads responses.{ref_step} "
                            f"but does not run after {ref_step!r}"
                        )


def _produces(step: Any) -> list[str]:
    if isinstance(step, TemplateStep):
        return [o.key for o in step.outputs]
    if isinstance(step, RestStep):
        return [
            k
            for k in (step.response_headers_reference_key, step.response_payload_reference_key)
            if k
        ]
    return []


def _consumes(step: Any) -> list[str]:
    if isinstance(step, RestStep) and step.export_reference_key:
        return [step.export_reference_key]
    if isinstance(step, FileStorageStep):
        return [
            o.export_reference_key
            for r in step.export_rules
            for o in r.export_object_configurations
            if o.type == "custom_format" and o.export_reference_key
        ]
    if isinstance(step, ExtractStep):
        return [s.source_reference_key for s in step.sources if s.source_reference_key]
    return []


def _conditions(step: Any) -> list[str]:
    texts = [step.when] if step.when else []
    if isinstance(step, EvaluateStep):
        texts.append(step.expression)
    return texts


def _find_cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    """Return one cycle as a path (``a -> b -> a``) or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if state.get(dep) is None:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


# ------------------------------------------------------------------------------- loaders


def _format_validation_error(exc: ValidationError, data: Any) -> list[str]:
    steps = data.get("steps") if isinstance(data, Mapping) else None
    problems = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        where = []
        for i, part in enumerate(loc):
            if (
                i > 0
                and loc[i - 1] == "steps"
                and isinstance(part, int)
                and isinstance(steps, list)
                and part < len(steps)
                and isinstance(steps[part], Mapping)
            ):
                where.append(f"[{part}] ({steps[part].get('name', '?')!r})")
            else:
                where.append(f".{part}" if not isinstance(part, int) else f"[{part}]")
        location = "".join(where).lstrip(".")
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ConfigError) and ctx_error.problems:
            problems.extend(ctx_error.problems)
            continue
        problems.append(f"{location}: {msg}" if location else msg)
    return problems


def _validate(data: Mapping[str, Any]) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"invalid pipeline {data.get('name', '')!r}".replace(" ''", ""),
            _format_validation_error(exc, data),
        ) from exc


def _read_source(source: str | Path | Mapping[str, Any] | Sequence[Any]) -> Any:
    if isinstance(source, Path) or (
        isinstance(source, str)
        and "\n" not in source
        and (source.endswith((".yaml", ".yml", ".json")) or Path(source).is_file())
    ):
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read pipeline file {path}: {exc}") from exc
    elif isinstance(source, str):
        text = source
    else:
        return source
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"pipeline is neither valid YAML nor JSON: {exc}") from exc


def load_pipeline(
    source: str | Path | Mapping[str, Any] | Sequence[Any], *, name: str | None = None
) -> PipelineConfig:
    """Load native YAML/JSON or Rossum v1 hooks (file path, text, dict or list).

    Rossum input is recognised as a list of hooks, a ``/v1/hooks`` page (``results``), a
    ``{"hooks": [...]}`` wrapper or a single hook object (has ``settings``).
    """
    data = _read_source(source)
    if isinstance(data, list):
        return from_rossum_hooks(data, name=name)
    if not isinstance(data, Mapping):
        raise ConfigError("a pipeline must be a mapping (native) or a list of Rossum hooks")
    if "steps" in data:
        if name:
            data = {**data, "name": name}
        return _validate(data)
    if isinstance(data.get("results"), list):
        return from_rossum_hooks(data["results"], name=name)
    if isinstance(data.get("hooks"), list):
        return from_rossum_hooks(data["hooks"], name=name or data.get("name"))
    if "settings" in data:
        return from_rossum_hooks([data], name=name)
    raise ConfigError(
        "unrecognised pipeline: expected 'steps' (native) or Rossum hooks "
        "(a list, 'results' or 'hooks')"
    )


# ------------------------------------------------------------------------- Rossum v1 input

_HOOK_META_KEYS = {
    "id",
    "url",
    "name",
    "type",
    "queues",
    "run_after",
    "events",
    "config",
    "settings",
    "secrets",
    "active",
    "sideload",
    "token_owner",
    "test",
    "description",
    "extension_source",
    "settings_schema",
    "secrets_schema",
    "guide",
    "read_more_url",
    "extension_image_url",
    "metadata",
    "token_lifetime_s",
    "status",
    "created_by",
    "created_at",
    "modified_by",
    "modified_at",
    "hook_template",
    "organization",
}


class _V1Converter:
    """Turns Rossum hook objects into native step dicts, collecting warnings."""

    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def take(
        self, settings: Mapping[str, Any], known: Iterable[str], where: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        known = set(known)
        picked = {k: v for k, v in settings.items() if k in known}
        extra = {k: v for k, v in settings.items() if k not in known}
        if extra:
            self.warn(
                f"{where}: unknown settings keys preserved in 'extra': {', '.join(sorted(extra))}"
            )
        return picked, extra

    def prune(self, value: Any, model: type[BaseModel], where: str, extra: dict[str, Any]) -> Any:
        """Drop keys ``model`` does not know from a nested v1 object, keeping them in extra."""
        if not isinstance(value, Mapping):
            return value
        known, unknown = self.take(value, _known_keys(model), where)
        if unknown:
            extra.setdefault("nested", {})[where] = unknown
        return known

    def prune_list(
        self, values: Any, model: type[BaseModel], where: str, extra: dict[str, Any]
    ) -> Any:
        """:meth:`prune` every item of a list."""
        if not isinstance(values, list):
            return values
        return [self.prune(v, model, f"{where}[{i}]", extra) for i, v in enumerate(values)]

    def prune_rules(self, rules: Any, where: str, extra: dict[str, Any]) -> Any:
        """Export rules and their object configurations."""
        rules = self.prune_list(rules, ExportRule, where, extra)
        for i, rule in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(rule, dict) and "export_object_configurations" in rule:
                rule["export_object_configurations"] = self.prune_list(
                    rule["export_object_configurations"],
                    ExportObject,
                    f"{where}[{i}].export_object_configurations",
                    extra,
                )
        return rules

    def infer_type(self, hook: Mapping[str, Any]) -> str | None:
        settings = hook.get("settings") or {}
        name = str(hook.get("name") or "").lower()
        if "export_configs" in settings:
            return "template"
        if "request" in settings:
            return "rest"
        if "extract" in settings:
            return "extract"
        if "export_rules" in settings or ("exports" in settings and "path" in settings):
            cred_type = str((settings.get("credentials") or {}).get("type") or "sftp").lower()
            return "s3" if cred_type == "s3" else "sftp"
        if "stages" in settings:
            return "request_processor"
        if "condition" in settings:
            return "evaluate"
        if not settings and ("purge" in name or "clean" in name):
            return "clean"
        return None

    def convert(self, hook: Mapping[str, Any], name: str, kind: str) -> dict[str, Any]:
        settings = dict(hook.get("settings") or {})
        where = f"hook {name!r}"
        step: dict[str, Any] = {"name": name, "type": kind}
        extra: dict[str, Any] = {}
        if kind == "template":
            picked, extra = self.take(settings, {"export_configs"}, where)
            outputs = []
            for i, cfg in enumerate(picked["export_configs"] or []):
                cfg_known, cfg_extra = self.take(
                    cfg,
                    {
                        "export_reference_key",
                        "file_content_template",
                        "file_content_template_multiline",
                        "content_encoding",
                    },
                    f"{where} export_configs[{i}]",
                )
                if (
                    "file_content_template" in cfg_known
                    and "file_content_template_multiline" in cfg_known
                ):
                    self.warn(
                        f"{where} export_configs[{i}]: both file_content_template and "
                        "file_content_template_multiline are set; using "
                        "file_content_template"
                    )
                    cfg_extra["file_content_template_multiline"] = cfg_known.pop(
                        "file_content_template_multiline"
                    )
                if cfg_extra:
                    extra.setdefault("export_configs", {})[str(i)] = cfg_extra
                # Rossum renders missing variables as "" - keep that for verbatim imports.
                outputs.append({**cfg_known, "undefined": "lenient", "validate_output": False})
            step["outputs"] = outputs
        elif kind == "rest":
            picked, extra = self.take(
                settings,
                {
                    "export_reference_key",
                    "request",
                    "auth",
                    "condition",
                    "status_code_resolver",
                    "response_headers_reference_key",
                    "response_payload_reference_key",
                    "mode",
                },
                where,
            )
            request, req_extra = self.take(
                picked.pop("request") or {},
                {"url", "method", "headers", "content", "file_name", "file_key", "request_data"},
                f"{where} request",
            )
            if req_extra:
                extra["request"] = req_extra
            step.update(picked)
            step["request"] = request
            if "status_code_resolver" in step:
                step["status_code_resolver"] = self.prune(
                    step["status_code_resolver"],
                    StatusCodeResolver,
                    f"{where} status_code_resolver",
                    extra,
                )
            if isinstance(step.get("auth"), Mapping):
                auth, auth_extra = self.take(
                    step["auth"], {"url", "method", "headers", "data"}, f"{where} auth"
                )
                step["auth"] = auth
                if auth_extra:
                    extra["auth"] = auth_extra
            if step.get("condition") == "":
                step.pop("condition")
            self.warn(
                f"{where}: non-2xx replies now fail the export (Rossum counts every "
                "status as success); set rossum_compat_any_status_is_success: true "
                "to keep Rossum's behaviour"
            )
        elif kind == "extract":
            picked, extra = self.take(settings, {"extract"}, where)
            sources = []
            for i, src in enumerate(picked["extract"] or []):
                known, src_extra = self.take(
                    src,
                    {"format", "source_reference_key", "condition", "extract_rules"},
                    f"{where} extract[{i}]",
                )
                if src_extra:
                    extra.setdefault("extract", {})[str(i)] = src_extra
                if known.get("condition") == "":
                    known.pop("condition")
                if "extract_rules" in known:
                    known["extract_rules"] = self.prune_list(
                        known["extract_rules"], ExtractRule, f"{where} extract[{i}].rules", extra
                    )
                sources.append(known)
            step["sources"] = sources
        elif kind == "evaluate":
            picked, extra = self.take(settings, {"condition", "message"}, where)
            step.update(picked)
        elif kind in ("sftp", "s3"):
            if "export_rules" in settings:
                picked, extra = self.take(
                    settings, {"credentials", "export_rules", "filename_collision"}, where
                )
                step.update(picked)
                step["export_rules"] = self.prune_rules(
                    step.get("export_rules"), f"{where} export_rules", extra
                )
            else:  # legacy "SFTP Export" extension
                picked, extra = self.take(
                    settings, {"path", "exports", "template_variables", "credentials"}, where
                )
                step["export_rules"] = [
                    {
                        "path_to_directory": picked.get("path", "/"),
                        "export_object_configurations": picked["exports"],
                    }
                ]
                step["export_rules"] = self.prune_rules(
                    step["export_rules"], f"{where} exports", extra
                )
                if "template_variables" in picked:
                    step["template_variables"] = self.prune_list(
                        picked["template_variables"],
                        TemplateVariable,
                        f"{where} template_variables",
                        extra,
                    )
                if "credentials" in picked:
                    step["credentials"] = picked["credentials"]
        elif kind == "clean":
            pass
        secrets = hook.get("secrets")
        if isinstance(secrets, Mapping) and secrets:
            step["secrets"] = {k: str(v) for k, v in secrets.items() if v is not None}
            self.warn(f"{where}: inline secrets imported; move them to a secret block")
        meta = {k: v for k, v in hook.items() if k not in ("settings", "secrets", "run_after")}
        unknown_meta = sorted(set(meta) - _HOOK_META_KEYS)
        if unknown_meta:
            self.warn(
                f"{where}: unknown hook keys preserved in 'extra.hook': {', '.join(unknown_meta)}"
            )
        if meta:
            extra["hook"] = meta
        if extra:
            step["extra"] = extra
        return step


def _known_keys(model: type[BaseModel]) -> set[str]:
    keys: set[str] = set()
    for name, info in model.model_fields.items():
        keys.add(name)
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            keys.update(a for a in alias.choices if isinstance(a, str))
        elif isinstance(alias, str):
            keys.add(alias)
    return keys


def _is_export_hook(hook: Mapping[str, Any]) -> bool:
    events = hook.get("events")
    if not events:
        return True
    return any(
        str(e).startswith("annotation_content.export") or str(e) == "annotation_content"
        for e in events
    )


def from_rossum_hooks(hooks: Sequence[Any], *, name: str | None = None) -> PipelineConfig:
    """Convert Rossum v1 hook objects (verbatim) into a :class:`PipelineConfig`.

    A hook's ``run_after`` entries may be hook URLs, ids or names. When a hook has no
    ``run_after`` key, it runs after the previous hook of the list. Hooks that are inactive,
    not on the Export event, or of an unrecognised kind are skipped with a warning, and
    dependencies on them are rewired to their own predecessors.
    """
    conv = _V1Converter()
    if not hooks:
        raise ConfigError("no hooks given")
    names: list[str] = []
    alias: dict[str, str] = {}
    used: set[str] = set()
    for i, hook in enumerate(hooks):
        if not isinstance(hook, Mapping):
            raise ConfigError(f"hook #{i + 1} is not an object")
        base = str(hook.get("name") or f"hook-{i + 1}").strip() or f"hook-{i + 1}"
        unique = base
        n = 2
        while unique in used:
            unique = f"{base} ({n})"
            n += 1
        if unique != base:
            conv.warn(f"duplicate hook name {base!r} renamed to {unique!r}")
        used.add(unique)
        names.append(unique)
        for key in (hook.get("url"), hook.get("id"), base, unique):
            if key is not None:
                alias.setdefault(str(key).rstrip("/"), unique)

    raw_after: dict[str, list[str]] = {}
    kinds: dict[str, str | None] = {}
    for i, hook in enumerate(hooks):
        hname = names[i]
        if "run_after" in hook and hook["run_after"] is not None:
            deps = []
            for ref in hook["run_after"]:
                target = alias.get(str(ref).rstrip("/"))
                if target is None:
                    # API URLs may differ in host; match on the trailing id.
                    match = re.search(r"/hooks/(\d+)/?$", str(ref))
                    target = alias.get(match.group(1)) if match else None
                if target is None:
                    conv.warn(f"hook {hname!r}: run_after {ref!r} is not in the input; ignored")
                else:
                    deps.append(target)
            raw_after[hname] = deps
        else:
            raw_after[hname] = [names[i - 1]] if i > 0 else []
        kind = conv.infer_type(hook)
        if hook.get("active") is False:
            conv.warn(f"hook {hname!r} is inactive; skipped")
            kind = None
        elif not _is_export_hook(hook):
            conv.warn(f"hook {hname!r} does not run on the Export event; skipped")
            kind = None
        elif kind == "request_processor":
            conv.warn(
                f"hook {hname!r}: Request Processor (v2 'stages') settings are not "
                "supported yet; skipped"
            )
            kind = None
        elif kind is None:
            conv.warn(
                f"hook {hname!r}: cannot tell the step type from its settings keys "
                f"({', '.join(sorted(hook.get('settings') or {})) or 'empty'}); skipped"
            )
        kinds[hname] = kind

    def resolve(dep: str, seen: frozenset[str] = frozenset()) -> list[str]:
        if kinds.get(dep) is not None:
            return [dep]
        if dep in seen:
            return []
        out: list[str] = []
        for parent in raw_after.get(dep, []):
            out.extend(resolve(parent, seen | {dep}))
        return out

    steps = []
    for i, hook in enumerate(hooks):
        hname = names[i]
        kind = kinds[hname]
        if kind is None:
            continue
        step = conv.convert(hook, hname, kind)
        after: list[str] = []
        for dep in raw_after[hname]:
            for resolved in resolve(dep):
                if resolved not in after and resolved != hname:
                    after.append(resolved)
        step["after"] = after
        steps.append(step)
    if not steps:
        raise ConfigError("no usable export hooks in the input", conv.warnings)
    data = {
        "name": name or "rossum-v1-pipeline",
        "steps": steps,
        "origin": "rossum_v1",
        "warnings": conv.warnings,
    }
    return _validate(data)


def dump_native(config: PipelineConfig) -> str:
    """Serialise a pipeline to native YAML (e.g. to migrate an imported v1 chain)."""
    data = config.model_dump(
        mode="json", exclude_defaults=True, by_alias=False, exclude={"warnings", "origin"}
    )
    for step, model in zip(data.get("steps", []), config.steps, strict=True):
        step.pop("secrets", None)
        step["type"] = model.type
        data_step = {"name": step.pop("name"), "type": step.pop("type")}
        data_step.update(step)
        step.clear()
        step.update(data_step)
    return yaml.safe_dump(json.loads(json.dumps(data)), sort_keys=False, allow_unicode=True)
