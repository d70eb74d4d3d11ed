"""Load-time validation of a pipeline: the models, then Jinja syntax and safe conditions.

Kept apart from :mod:`rossflow.export.config` because the template and condition languages
read the models; the models themselves import neither.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from rossflow.export.config import EvaluateStep, PipelineConfig, TemplateStep, conditions
from rossflow.export.errors import ConfigError, TemplateRenderError
from rossflow.export.evaluate import compile_condition
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
        where = f"step {step.name!r}"
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


def _check_template(problems: list[str], where: str, text: str, key: str, autoescape: bool) -> None:
    try:
        check_template(text, key=key, autoescape=autoescape)
    except TemplateRenderError as exc:
        problems.append(f"{where}: {exc}")


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
        ctx_error = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_error, ConfigError) and ctx_error.problems:
            problems.extend(ctx_error.problems)
            continue
        problems.append(f"{location}: {msg}" if location else msg)
    return problems
