"""Pipeline configuration models and their structural validation.

The models check what needs no other export module: field types, unique step names, ``after``
references, cycles, JMESPath / XPath / regex syntax, and that every ``export_reference_key``
consumed by a step is produced by an *ancestor* step (Rossum's order-by-hook-name chains fail
silently at run time instead). Jinja syntax and safe conditions need the template and
condition languages, which depend on these models; they are checked by
:mod:`rossflow.export.checks` when a pipeline is loaded (:mod:`rossflow.export.loading`).
Rossum hooks are converted by :mod:`rossflow.export.rossum_hooks`.

Over 600 lines but one concept: the pipeline schema (every step model and the DAG rules that
relate them), read top to bottom as the reference of the native format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import jmespath
import jmespath.exceptions
from lxml import etree
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from rossflow.export.errors import ConfigError
from rossflow.export.rp_spec import validate_call, validate_filter, validate_get_content

__all__ = [
    "AuthConfig",
    "CleanStep",
    "CodeStep",
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
    "RpCallStep",
    "RpCompat",
    "RpEvaluateStep",
    "RpGetContentStep",
    "RpStep",
    "RpStepBase",
    "S3Step",
    "SequenceSpec",
    "SftpStep",
    "SoapStep",
    "StatusCodeResolver",
    "Step",
    "TemplateOutput",
    "TemplateStep",
    "TemplateVariable",
    "conditions",
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
        default=None,
        description="Safe expression; the step is skipped when it is false (checked at load).",
    )
    secrets: dict[str, SecretStr] = Field(default_factory=dict)
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Unknown keys preserved from Rossum v1 input."
    )
    queues: list[int] = Field(
        default_factory=list,
        description="Rossum queue ids the step runs for (a hook's 'queues'); empty: every queue.",
    )

    @field_validator("queues", mode="before")
    @classmethod
    def _queue_ids(cls, value: Any) -> Any:
        """Accept queue URLs (``…/queues/123``) as Rossum hooks list them."""
        if not isinstance(value, list):
            return value
        out = []
        for item in value:
            text = str(item).rstrip("/")
            tail = text.rsplit("/", 1)[-1]
            if not tail.isdigit():
                raise ValueError(f"queue {item!r} is neither a queue id nor a queue URL")
            out.append(int(tail))
        return out

    def runs_for(self, queue_id: int | None) -> bool:
        """Whether the step belongs to the pipeline of ``queue_id`` (None: any queue)."""
        return queue_id is None or not self.queues or int(queue_id) in self.queues


class CleanStep(StepBase):
    """Rossum's "custom format templating purge": drop artefacts of earlier runs first."""

    type: Literal["clean"] = "clean"
    keys: list[str] | None = Field(
        default=None, description="Reference keys to purge; all export artefacts when unset."
    )


class TemplateOutput(_Model):
    """One rendered file (Rossum ``export_configs`` entry) or a tabular CSV/XLSX export."""

    key: str = Field(
        min_length=1, validation_alias=AliasChoices("key", "export_reference_key", "export_id")
    )
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
    jinja: Literal["rossflow", "rossum"] = Field(
        default="rossflow",
        description="'rossum': render exactly as Rossum's templating does (imported hooks): no "
        "autoescape, trailing newline dropped, None as 'None', Jinja's HTML-safe tojson.",
    )
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
        return self


_OUTPUT_KEYS = set(TemplateOutput.model_fields) | {
    "export_reference_key",
    "export_id",
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
    data: Any = Field(
        default=None,
        description="Rossum REST export 'data': a raw body string (e.g. '#{file_content}') or "
        "a dict of form fields (multipart when the Content-Type says so).",
    )
    file_content: str | None = Field(
        default=None,
        description="The file part of a multipart body, e.g. '#{original_file}'.",
    )
    file_name: str | None = None
    file_key: str | None = None
    request_data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _one_body(self) -> RestRequest:
        if self.content is not None and self.data is not None:
            raise ValueError("give request.content or request.data, not both")
        return self

    @property
    def payload(self) -> Any:
        """The body template, whichever of ``content`` / ``data`` holds it."""
        return self.content if self.content is not None else self.data

    @property
    def content_type(self) -> str:
        """The Content-Type header as configured ('' when unset)."""
        return {k.lower(): v for k, v in self.headers.items()}.get("content-type", "")

    @property
    def body_kind(self) -> Literal["raw", "json", "form", "multipart", "none"]:
        """Declared body kind, else inferred the way Rossum's examples use the fields."""
        if self.body:
            return self.body
        ctype = self.content_type.lower()
        if self.file_key or self.file_name or self.file_content:
            return "multipart"
        payload = self.payload
        if payload is None:
            return "multipart" if self.request_data else "none"
        if isinstance(payload, (dict, list)):
            if "multipart/form-data" in ctype and isinstance(payload, dict):
                return "multipart"
            if "x-www-form-urlencoded" in ctype or (self.data is not None and "json" not in ctype):
                return "form"
            return "json"
        return "raw"


class LookupRequest(_Model):
    """How ``idempotency: reconcile`` asks the target whether a call it may have processed
    created the record: a templated request (same placeholders as ``request``; a relative URL
    joins the target block's base URL) and a JMESPath over its JSON reply that yields the
    existing record, or nothing (null, empty) when there is none."""

    url: str
    method: Literal["GET", "POST"] = "GET"
    headers: dict[str, str] = Field(default_factory=dict)
    params: dict[str, str] = Field(default_factory=dict)
    found: str = Field(
        default="results[0]",
        description="JMESPath over the lookup's JSON reply selecting the existing record; "
        "it becomes the step's reply, so later steps read it like the original answer.",
    )

    @field_validator("found")
    @classmethod
    def _jmespath(cls, value: str) -> str:
        try:
            jmespath.compile(value)
        except jmespath.exceptions.JMESPathError as exc:
            raise ValueError(f"lookup.found {value!r} is not a valid JMESPath: {exc}") from exc
        return value


Idempotency = Literal["header", "reconcile", "none"]


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
    idempotency: Idempotency | None = Field(
        default=None,
        description="How a call whose outcome is unknown (timeout, 5xx, dropped connection, "
        "crash in flight) is resolved: 'header' resends with the same Idempotency-Key, "
        "'reconcile' runs 'lookup' first and adopts a record it finds, 'none' never resends "
        "and fails the document with 'outcome unknown'. Default: the target's setting.",
    )
    lookup: LookupRequest | None = None

    @model_validator(mode="after")
    def _reconcile_needs_lookup(self) -> RestStep:
        if self.idempotency == "reconcile" and self.lookup is None:
            raise ValueError(
                f"step {self.name!r}: idempotency: reconcile needs a 'lookup' request, e.g. "
                "lookup: {url: '/api/invoices?external_ref=@{document_id}', found: 'results[0]'}"
            )
        return self

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


class SoapStep(RestStep):
    """SOAP/XML delivery: a templated envelope POSTed with the SOAP content type and action.

    SOAP 1.1 sends ``Content-Type: text/xml; charset=utf-8`` and a ``SOAPAction`` header;
    SOAP 1.2 sends ``application/soap+xml; charset=utf-8; action="…"``. A ``Fault`` in the
    reply fails the step with its code and text, whatever the HTTP status. Values are read
    from the reply with an ``extract`` step (``source_step`` + ``format: xml`` + ``xpath``).
    """

    type: Literal["soap"] = "soap"  # type: ignore[assignment]
    soap_action: str | None = None
    soap_version: Literal["1.1", "1.2"] = "1.1"


class CodeStep(StepBase):
    """A Python function in place of a Rossum serverless (code) hook.

    ``function`` is ``"package.module:function"`` on the import path. It is called with the
    payload a Rossum serverless hook gets on the export event and returns a hook answer:
    ``{"messages": [...], "operations": [...]}`` plus, as a rossflow extension,
    ``"references": {key: value}`` to store reference keys (declare them in ``produces``).
    """

    type: Literal["code"] = "code"
    function: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    settings: dict[str, Any] = Field(default_factory=dict)
    produces: list[str] = Field(default_factory=list)
    replaces_hook: str | None = Field(
        default=None, description="Name of the Rossum code hook this function replaces."
    )


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
        return self

    @property
    def expression(self) -> str:
        """The expression text, whichever field holds it."""
        return self.condition or self.require or ""

    @property
    def fails_when_true(self) -> bool:
        """``condition`` fails on true; ``require`` fails on false."""
        return self.condition is not None


# ------------------------------------------------------------- Request Processor (v2) stages


class RpStepBase(StepBase):
    """One phase of a Request Processor stage (see :mod:`rossflow.export.request_processor`).

    ``gate`` names the ``rp_evaluate`` step of the same stage: when its conditions failed for
    a document, this step is skipped for it (and reported as skipped by that condition).
    """

    hook: str = Field(min_length=1, description="Request Processor hook the stage comes from.")
    stage: int = Field(ge=0, description="0-based index in settings.stages.")
    gate: str | None = None
    key_path: str = Field(default="", description="Where the phase is in the user's input.")


class RpEvaluateStep(RpStepBase):
    """``evaluate``: MongoDB-style conditions; when one fails, the stage is skipped."""

    type: Literal["rp_evaluate"] = "rp_evaluate"
    conditions: list[dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> RpEvaluateStep:
        problems = []
        for i, rule in enumerate(self.conditions):
            problems += validate_filter(rule.get("condition"), f"{self.key_path}[{i}].condition")
        if problems:
            raise ConfigError(f"step {self.name!r}: invalid evaluate", problems)
        return self


class RpGetContentStep(RpStepBase):
    """``get_content``: relations, documents or explicit templates into ``property.<name>``."""

    type: Literal["rp_get_content"] = "rp_get_content"
    rules: list[dict[str, Any]] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> RpGetContentStep:
        problems = []
        for i, rule in enumerate(self.rules):
            problems += validate_get_content(rule, f"{self.key_path}[{i}]")
        if problems:
            raise ConfigError(f"step {self.name!r}: invalid get_content", problems)
        return self


class RpCallStep(RpStepBase):
    """One ``call_api`` entry: auth, request (optionally per item), response handlers."""

    type: Literal["rp_call"] = "rp_call"
    call: dict[str, Any]

    @model_validator(mode="after")
    def _check(self) -> RpCallStep:
        problems = validate_call(self.call, self.key_path)
        if problems:
            raise ConfigError(f"step {self.name!r}: invalid call_api", problems)
        return self


RpStep = RpEvaluateStep | RpGetContentStep | RpCallStep


class RpCompat(_Model):
    """Switches back to Rossum's Request Processor behaviour where rossflow deliberately differs.

    * ``non_2xx``: ``error`` (default) fails the document on a non-2xx reply (after its
      response handlers ran); ``record`` only records it, as Rossum does.
    * ``unresolved_placeholder``: ``error`` (default) fails the document naming the
      placeholder; ``skip_call`` abandons that ``call_api`` entry with a warning, as Rossum does.
    * ``single_generic_message``: ``false`` (default) gives each failure its own message;
      ``true`` replaces it with Rossum's one generic sentence.
    """

    non_2xx: Literal["error", "record"] = "error"
    unresolved_placeholder: Literal["error", "skip_call"] = "error"
    single_generic_message: bool = False


Step = Annotated[
    CleanStep
    | TemplateStep
    | RestStep
    | SoapStep
    | SftpStep
    | S3Step
    | ExtractStep
    | EvaluateStep
    | CodeStep
    | RpEvaluateStep
    | RpGetContentStep
    | RpCallStep,
    Field(discriminator="type"),
]


class Defaults(_Model):
    """Pipeline-wide defaults applied to steps that leave a field unset."""

    timeout_s: float = Field(default=120.0, gt=0)
    mode: Literal["wait", "retry"] = "wait"
    retries: int = Field(default=3, ge=0, le=10)
    success_codes: list[int | str] = Field(default_factory=lambda: list[int | str](["2xx"]))
    filename_collision: CollisionField = "replace"
    #: Export-event mode: Rossum's "retry export" (PATCH exporting) sends every step again
    #: instead of reusing the deliveries that succeeded.
    resend_on_retry: bool = False
    #: Default of the steps' ``idempotency`` (None: the target block's, else ``header``).
    idempotency: Idempotency | None = None


# ------------------------------------------------------------------------------ pipeline


class PipelineConfig(_Model):
    """A validated export pipeline: steps forming a DAG through ``after``."""

    name: str = Field(min_length=1)
    description: str | None = None
    version: Literal[1] = 1
    defaults: Defaults = Field(default_factory=Defaults)
    auths: dict[str, AuthConfig] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)
    compat: RpCompat = Field(default_factory=RpCompat)
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

    def steps_for_queue(self, queue_id: int | None) -> list[Step]:
        """Topologically ordered steps that run for ``queue_id`` (a hook's ``queues``).

        One file may hold the chains of several queues; a run for queue Q uses only the steps
        attached to Q (and those attached to no queue).
        """
        return [s for s in self.topological_order() if s.runs_for(queue_id)]

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
        producers: dict[str, list[Any]] = {}
        for step in self.steps:
            for key in _produces(step):
                for other in producers.get(key, []):
                    if other.name != step.name and _share_queue(other, step):
                        hard.append(
                            f"reference key {key!r} is produced by both {other.name!r} and "
                            f"{step.name!r} for the same queue (give them disjoint 'queues' or "
                            "rename one key)"
                        )
                producers.setdefault(key, []).append(step)
        by_name = {s.name: s for s in self.steps}
        for step in self.steps:
            ancestors = self.ancestors(step.name)
            for key in _consumes(step):
                found = producers.get(key, [])
                relevant = [p for p in found if _share_queue(p, step)]
                if not found:
                    # An imported hook may read a key made by a hook not in the input (a
                    # partial chain): a warning there, an error in native pipelines.
                    (soft if self.origin == "rossum_v1" else hard).append(
                        f"step {step.name!r} uses reference key {key!r} that no step produces "
                        "(add the step that produces it, or fix the key)"
                    )
                elif not relevant:
                    hard.append(
                        f"step {step.name!r} uses reference key {key!r}, produced only for "
                        f"other queues by {', '.join(repr(p.name) for p in found)}"
                    )
                for producer in relevant:
                    if producer.name not in ancestors:
                        hard.append(
                            f"step {step.name!r} uses {key!r} before it is produced: it does not "
                            f"run after {producer.name!r} (add {producer.name!r} to its "
                            "'after' / 'run_after')"
                        )
            if isinstance(step, RestStep):
                # Rossum's documented examples leave URLs blank to be filled in: a warning
                # for imported hooks, an error in native pipelines.
                blank = soft if self.origin == "rossum_v1" else hard
                if not step.request.url.strip():
                    blank.append(f"step {step.name!r}: request.url is empty")
                if isinstance(step.auth, AuthConfig) and not step.auth.url.strip():
                    blank.append(f"step {step.name!r}: auth.url is empty")
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


def _share_queue(a: Any, b: Any) -> bool:
    """Whether two steps can run for the same queue (no 'queues' means every queue)."""
    return not a.queues or not b.queues or bool(set(a.queues) & set(b.queues))


def _produces(step: Any) -> list[str]:
    if isinstance(step, CodeStep):
        return list(step.produces)
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


def conditions(step: Any) -> list[str]:
    """Condition expressions of a step (``when`` and an evaluator's expression)."""
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
