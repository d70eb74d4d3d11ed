"""Rossum v1 hosted-extension hooks -> native pipeline.

Hooks are taken verbatim (``[{"name", "settings", "run_after", ...}]`` as returned by
``GET /v1/hooks``); the step type is inferred from the settings keys, unknown keys are
preserved in ``step.extra`` and reported in ``PipelineConfig.warnings``. The Request Processor
(v2 ``stages``) converter belongs here too.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import AliasChoices, BaseModel

from rossflow.export.checks import validate_pipeline
from rossflow.export.config import (
    ExportObject,
    ExportRule,
    ExtractRule,
    PipelineConfig,
    StatusCodeResolver,
    TemplateVariable,
)
from rossflow.export.errors import ConfigError

__all__ = ["from_rossum_hooks"]

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
    return validate_pipeline(data)
