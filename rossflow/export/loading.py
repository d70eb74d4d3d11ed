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
        return validate_pipeline(data)
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
