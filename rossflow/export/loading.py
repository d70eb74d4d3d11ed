"""Loading pipelines: native YAML/JSON or Rossum hooks, from a path, text or data.

Everything that can be checked before the first annotation is exported is checked here, at
load time (see :mod:`rossflow.export.checks`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rossflow.export.checks import validate_pipeline
from rossflow.export.config import PipelineConfig
from rossflow.export.errors import ConfigError
from rossflow.export.request_processor import convert_request_processor
from rossflow.export.rossum_hooks import from_rossum_hooks

__all__ = ["dump_native", "load_pipeline"]


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


# Keys of the ``{"hooks": [...]}`` wrapper file (what ``rossflow hooks pull`` writes).
HOOKS_FILE_KEYS = frozenset(
    {
        "hooks",
        "name",
        "description",
        "code_steps",
        "compat",
        "queue",
        "source",
        "pipeline_secrets",
    }
)


def load_pipeline(
    source: str | Path | Mapping[str, Any] | Sequence[Any],
    *,
    name: str | None = None,
    code_steps: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """Load native YAML/JSON or Rossum v1 hooks (file path, text, dict or list).

    Rossum input is recognised as a list of hooks, a ``/v1/hooks`` page (``results``), a
    ``{"hooks": [...]}`` wrapper or a single hook object (has ``settings``). The wrapper may
    carry ``code_steps`` (hook name -> ``"module:function"``) replacing serverless hooks;
    ``code_steps`` given here win over the file's.
    """
    data = _read_source(source)
    if isinstance(data, list):
        return from_rossum_hooks(data, name=name, code_steps=code_steps)
    if not isinstance(data, Mapping):
        raise ConfigError("a pipeline must be a mapping (native) or a list of Rossum hooks")
    if "steps" in data:
        if name:
            data = {**data, "name": name}
        return validate_pipeline(_expand_request_processors(data))
    if isinstance(data.get("results"), list):
        return from_rossum_hooks(data["results"], name=name, code_steps=code_steps)
    if isinstance(data.get("hooks"), list):
        unknown = sorted(set(data) - HOOKS_FILE_KEYS)
        if unknown:
            raise ConfigError(
                f"unknown top-level keys in the hooks file: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(HOOKS_FILE_KEYS))})"
            )
        mapping = data.get("code_steps") or {}
        if not isinstance(mapping, Mapping):
            raise ConfigError("code_steps must map hook names to 'module:function' strings")
        config = from_rossum_hooks(
            data["hooks"],
            name=name or data.get("name"),
            code_steps={**mapping, **(code_steps or {})},
            compat=data.get("compat"),
        )
        if data.get("description") and not config.description:
            config.description = str(data["description"])
        return config
    if "settings" in data:
        return from_rossum_hooks([data], name=name, code_steps=code_steps)
    raise ConfigError(
        "unrecognised pipeline: expected 'steps' (native) or Rossum hooks "
        "(a list, 'results' or 'hooks')"
    )


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


def _expand_request_processors(data: Mapping[str, Any]) -> Mapping[str, Any]:
    """Native ``type: request_processor`` steps (Rossum ``stages`` inline) -> ``rp_*`` steps.

    Steps listing the request processor in ``after`` run after its last stage step.
    """
    steps = data.get("steps")
    if not isinstance(steps, list) or not any(
        isinstance(s, Mapping) and s.get("type") == "request_processor" for s in steps
    ):
        return data
    warnings: list[str] = list(data.get("warnings") or [])
    last: dict[str, str] = {}
    out: list[Any] = []
    for step in steps:
        if not (isinstance(step, Mapping) and step.get("type") == "request_processor"):
            out.append(step)
            continue
        name = str(step.get("name") or "request-processor")
        unknown = set(step) - {
            "name",
            "type",
            "after",
            "run_after",
            "stages",
            "debugging",
            "secrets",
        }
        if unknown:
            raise ConfigError(
                f"step {name!r}: unknown keys {', '.join(sorted(unknown))} "
                "(a request_processor step has stages, debugging, after, secrets)"
            )
        hook = {
            "name": name,
            "settings": {k: step[k] for k in ("stages", "debugging") if k in step},
            "secrets": step.get("secrets"),
        }
        converted = convert_request_processor(hook, name, warnings.append)
        converted[0]["after"] = list(step.get("after") or step.get("run_after") or [])
        last[name] = converted[-1]["name"]
        out.extend(converted)
    for step in out:
        if isinstance(step, dict):
            for key in ("after", "run_after"):
                if isinstance(step.get(key), list):
                    step[key] = [last.get(str(d), d) for d in step[key]]
    return {**data, "steps": out, "warnings": warnings}
