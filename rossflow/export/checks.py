"""Load-time validation of a pipeline: the models, then Jinja syntax and safe conditions.

Kept apart from :mod:`rossflow.export.config` because the template and condition languages
read the models; the models themselves import neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from rossflow.export.code_step import check_code_steps
from rossflow.export.config import (
    AuthConfig,
    EvaluateStep,
    PipelineConfig,
    RestStep,
    TemplateStep,
    conditions,
)
from rossflow.export.errors import ConfigError, TemplateRenderError
from rossflow.export.evaluate import compile_condition
from rossflow.export.placeholders import OPERATORS, find_placeholders
from rossflow.export.templating import check_template, wants_autoescape

__all__ = ["check_expressions", "validate_pipeline"]


def validate_pipeline(data: Mapping[str, Any]) -> PipelineConfig:
    """Validate native pipeline data, then check its templates and conditions.

    Raises :class:`ConfigError` listing every problem found.
    """
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_pipeline_label(data), _format_validation_error(exc, data)) from exc
    check_expressions(config)
    problems = check_code_steps(config) + check_placeholders(config)
    if problems:
        raise ConfigError(_pipeline_label(data), problems)
    return config


def check_expressions(config: PipelineConfig) -> None:
    """Check Jinja syntax and safe conditions, and that conditions read upstream steps only.

    Syntax problems are errors; a condition reading a step that does not run before it is an
    error for native pipelines and a warning for imported Rossum hooks (as for reference keys).
    """
    hard: list[str] = []
    soft: list[str] = []
    by_name = {s.name: s for s in config.steps}
    for step in config.steps:
        where = _step_label(step)
        if isinstance(step, TemplateStep):
            for output in step.outputs:
                if output.tabular is None:
                    _check_template(
                        hard, where, output.template_text, output.key, wants_autoescape(output)
                    )
        if isinstance(step, EvaluateStep) and step.message:
            _check_template(hard, where, step.message, f"{step.name}.message", False)
        ancestors: set[str] | None = None
        for text in conditions(step):
            try:
                referenced = compile_condition(text).referenced_steps
            except ConfigError as exc:
                hard.extend(f"{where}: {p}" for p in exc.problems or [str(exc)])
                continue
            for ref_step in referenced:
                if ancestors is None:
                    ancestors = config.ancestors(step.name)
                if ref_step not in by_name:
                    soft.append(f"{where}: condition refers to unknown step responses.{ref_step}")
                elif ref_step not in ancestors:
                    soft.append(
                        f"{where}: condition reads responses.{ref_step} "
                        f"but does not run after {ref_step!r}"
                    )
    if config.origin != "rossum_v1":
        hard.extend(soft)
        soft = []
    if hard:
        raise ConfigError(_pipeline_label({"name": config.name}), hard)
    for message in soft:
        if message not in config.warnings:
            config.warnings.append(message)


def _step_label(step: Any) -> str:
    """``hook 'X'`` for steps imported from Rossum hooks, ``step 'X'`` for native ones."""
    return f"hook {step.name!r}" if step.extra.get("hook") else f"step {step.name!r}"


def check_placeholders(config: PipelineConfig) -> list[str]:
    """Placeholders no step provides: ``#{file_content}`` without ``export_reference_key``,
    a token secret without ``auth``, unknown ``#{…}`` names and unknown ``$OPERATOR$`` keys."""
    problems: list[str] = []
    for step in config.steps:
        if not isinstance(step, RestStep):
            continue
        where = _step_label(step)
        req = step.request
        parts = {
            "request.url": req.url,
            "request.headers": req.headers,
            "request.params": req.params,
            "request.content": req.content,
            "request.data": req.data,
            "request.file_content": req.file_content,
            "request.file_name": req.file_name,
            "request.request_data": req.request_data,
        }
        auth = config.auths.get(step.auth) if isinstance(step.auth, str) else step.auth
        token_name = auth.cache_as if isinstance(auth, AuthConfig) else None
        for path, value in parts.items():
            if value in (None, {}, ""):
                continue
            for token in sorted(find_placeholders(value)):
                if token.startswith("#{"):
                    name = token[2:-1].strip()
                    if name == "file_content" and not step.export_reference_key:
                        problems.append(
                            f"{where}: {path} uses #{{file_content}} but no "
                            "export_reference_key says which templated file it is; add "
                            "export_reference_key (the key of a template output)"
                        )
                    elif name not in ("file_content", "original_file"):
                        problems.append(
                            f"{where}: {path} uses unknown placeholder {token} (use "
                            "#{file_content} or #{original_file})"
                        )
                elif token.startswith("{secret.") and token_name is None:
                    name = token[len("{secret.") : -1].strip()
                    if name == "access_token":
                        problems.append(
                            f"{where}: {path} uses {token}, which only an 'auth' block "
                            "provides; add auth (the token request) or supply the secret "
                            "under another name"
                        )
            for op in sorted(_operator_keys(value)):
                if op not in OPERATORS and op not in _OPERATOR_ALIASES:
                    problems.append(
                        f"{where}: {path} uses unknown operator {op} (known: "
                        f"{', '.join(sorted(OPERATORS))})"
                    )
    return problems


_OPERATOR_ALIASES = {"$IF_DATAPOINT_VALUE"}


def _operator_keys(value: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and key.startswith("$") and key[1:2].isupper():
                found.add(key)
            found |= _operator_keys(item)
    elif isinstance(value, list):
        for item in value:
            found |= _operator_keys(item)
    return found


def _check_template(problems: list[str], where: str, text: str, key: str, autoescape: bool) -> None:
    try:
        check_template(text, key=key, autoescape=autoescape)
    except TemplateRenderError as exc:
        problems.append(f"{where}: {exc}")


STEP_TYPES = ("clean", "template", "rest", "soap", "sftp", "s3", "extract", "evaluate", "code")


def _pipeline_label(data: Mapping[str, Any]) -> str:
    return f"invalid pipeline {data.get('name', '')!r}".replace(" ''", "")


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
        if err.get("type") in ("union_tag_invalid", "union_tag_not_found"):
            tag = (err.get("ctx") or {}).get("tag")
            if tag and location.endswith(f".{tag}"):
                location = location.rsplit(".", 1)[0]
            msg = (
                f"unknown step type {tag!r}; use one of {', '.join(STEP_TYPES)}"
                if tag
                else f"the step has no 'type'; use one of {', '.join(STEP_TYPES)}"
            )
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ConfigError) and ctx_error.problems:
            problems.extend(ctx_error.problems)
            continue
        problems.append(f"{location}: {msg}" if location else msg)
    return problems
