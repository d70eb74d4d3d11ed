"""Rossum v1 hosted-extension hooks -> native pipeline.

Hooks are taken verbatim (``[{"name", "settings", "run_after", ...}]`` as returned by
``GET /v1/hooks``); the step type is inferred from the settings keys, unknown keys are
preserved in ``step.extra`` and reported in ``PipelineConfig.warnings``. The Request Processor
(v2 ``stages``) hooks are converted by :mod:`rossflow.export.request_processor`
into several steps each.

Over 600 lines but one concept: the v1 converter (:class:`_V1Converter`), one hook-settings
shape per step type plus the checks that keep its error messages pointing at the hook and key
as the user wrote them; splitting it would separate each shape from its checks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import AliasChoices, BaseModel, TypeAdapter, ValidationError

from rossflow.export.checks import validate_pipeline
from rossflow.export.config import (
    ExportObject,
    ExportRule,
    ExtractRule,
    PipelineConfig,
    StatusCodeResolver,
    Step,
    TemplateVariable,
)
from rossflow.export.errors import ConfigError
from rossflow.export.request_processor import convert_request_processor

__all__ = ["convert_request_processor", "from_rossum_hooks", "is_code_hook", "is_export_hook"]

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

    def __init__(self, code_steps: Mapping[str, Any] | None = None) -> None:
        self.warnings: list[str] = []
        self.code_steps: dict[str, Any] = dict(code_steps or {})
        # step name -> {internal model path -> the path as the user wrote it in the hook}
        self.paths: dict[str, dict[str, str]] = {}

    def path(self, step: str, internal: str, written: str) -> None:
        """Remember how an internal field path is spelled in the user's hook settings."""
        self.paths.setdefault(step, {})[internal] = written

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
        if _is_netsuite(settings):
            return "netsuite"
        if "stages" in settings:
            return "request_processor"
        if "export_configs" in settings:
            return "template"
        if "request" in settings:
            return "rest"
        if "extract" in settings:
            return "extract"
        if "export_rules" in settings or ("exports" in settings and "path" in settings):
            cred_type = str((settings.get("credentials") or {}).get("type") or "sftp").lower()
            return "s3" if cred_type == "s3" else "sftp"
        if "condition" in settings and set(settings) <= {"condition", "message"}:
            return "evaluate"
        if not settings and ("purge" in name or "clean" in name) and not is_code_hook(hook):
            return "clean"
        if is_code_hook(hook):
            return "code"
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
                        "export_id",
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
                if "export_id" in cfg_known and "export_reference_key" in cfg_known:
                    raise ConfigError(
                        f"{where}: settings.export_configs[{i}] has both export_id and "
                        "export_reference_key (export_id is the old name; keep one)"
                    )
                key_name = "export_id" if "export_id" in cfg_known else "export_reference_key"
                self.path(name, f"outputs[{i}].key", f"export_configs[{i}].{key_name}")
                self.path(name, f"outputs[{i}]", f"export_configs[{i}]")
                for internal, written in (
                    ("template", "file_content_template"),
                    ("template_multiline", "file_content_template_multiline"),
                ):
                    self.path(name, f"outputs[{i}].{internal}", f"export_configs[{i}].{written}")
                # Rossum renders missing variables as "" - keep that for verbatim imports.
                outputs.append(
                    {
                        **cfg_known,
                        "undefined": "lenient",
                        "jinja": "rossum",
                        "validate_output": False,
                    }
                )
            step["outputs"] = outputs
        elif kind == "rest":
            picked, extra = self.take(
                settings,
                {
                    "export_reference_key",
                    "export_id",
                    "request",
                    "auth",
                    "condition",
                    "status_code_resolver",
                    "response_headers_reference_key",
                    "response_payload_reference_key",
                    "mode",
                    "rossum_compat_any_status_is_success",
                },
                where,
            )
            if "export_id" in picked:
                if "export_reference_key" in picked:
                    raise ConfigError(
                        f"{where}: settings has both export_id and export_reference_key "
                        "(export_id is the old name; keep one)"
                    )
                picked["export_reference_key"] = picked.pop("export_id")
                self.path(name, "export_reference_key", "export_id")
            request, req_extra = self.take(
                picked.pop("request") or {},
                {
                    "url",
                    "method",
                    "headers",
                    "content",
                    "data",
                    "file_content",
                    "file_name",
                    "file_key",
                    "request_data",
                },
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
            if not step.get("rossum_compat_any_status_is_success"):
                self.warn(
                    f"{where}: non-2xx replies now fail the export (Rossum counts every "
                    "status as success); set rossum_compat_any_status_is_success: true "
                    "in its settings to keep Rossum's behaviour"
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
        elif kind == "code":
            spec = self.code_steps[name]
            function, code_settings = (
                (spec.get("function"), spec.get("settings", settings))
                if isinstance(spec, Mapping)
                else (spec, settings)
            )
            step.update(
                function=function,
                settings=dict(code_settings or {}),
                replaces_hook=name,
                produces=list(spec.get("produces", [])) if isinstance(spec, Mapping) else [],
            )
            self.path(name, "function", f"code_steps[{name!r}]")
        if hook.get("queues"):
            step["queues"] = list(hook["queues"])
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


def is_export_hook(hook: Mapping[str, Any]) -> bool:
    events = hook.get("events")
    if not events:
        return True
    return any(
        str(e).startswith("annotation_content.export") or str(e) == "annotation_content"
        for e in events
    )


def is_code_hook(hook: Mapping[str, Any]) -> bool:
    """A Rossum serverless function (its code runs inside Rossum, not in rossflow)."""
    config = hook.get("config") or {}
    return hook.get("type") == "function" or bool(
        isinstance(config, Mapping) and (config.get("runtime") or config.get("code"))
    )


def _is_netsuite(settings: Mapping[str, Any]) -> bool:
    """Rossum's NetSuite connector: ``export_configs[].payload`` (SOAP calls), not templates."""
    if "netsuite_settings" in settings:
        return True
    configs = settings.get("export_configs")
    return isinstance(configs, list) and any(
        isinstance(c, Mapping) and "payload" in c and not any("template" in k for k in c)
        for c in configs
    )


def _netsuite_refusal(hook_name: str, settings: Mapping[str, Any]) -> str:
    calls = sorted(
        {
            f"{p.get('method_name')}({a.get('_ns_type')})"
            for c in settings.get("export_configs") or []
            if isinstance(c, Mapping)
            for p in c.get("payload") or []
            if isinstance(p, Mapping)
            for a in p.get("method_args") or [{}]
            if isinstance(a, Mapping)
        }
    )
    return (
        f"hook {hook_name!r} is Rossum's NetSuite connector (settings.export_configs[].payload "
        f"calling {', '.join(calls) or 'SuiteTalk'} with settings.netsuite_settings): rossflow "
        "has no SuiteTalk client (WSDL-typed records, token-based OAuth1 signing), so run it as a "
        "'soap' step with a templated envelope or as a 'code' step mapped in code_steps"
    )


def _code_hook_refusal(hook_name: str, hook: Mapping[str, Any]) -> str:
    runtime = (hook.get("config") or {}).get("runtime") or "serverless"
    return (
        f"hook {hook_name!r} is a Rossum serverless function ({runtime}) whose code rossflow "
        f"cannot run; map it to a Python function in the pipeline file: "
        f'code_steps: {{"{hook_name}": "yourpackage.module:function"}} '
        f'(or {{"{hook_name}": null}} to leave it out on purpose); see docs/code-steps.md'
    )


def _cycle(graph: Mapping[str, list[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in graph:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def from_rossum_hooks(
    hooks: Sequence[Any],
    *,
    name: str | None = None,
    code_steps: Mapping[str, Any] | None = None,
    compat: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """Convert Rossum v1 hook objects (verbatim) into a :class:`PipelineConfig`.

    A hook's ``run_after`` entries may be hook URLs, ids or names. When a hook has no
    ``run_after`` key, it runs after the previous hook of the list. Hooks that are inactive or
    not on the Export event are left out with a warning (they are not part of the export), and
    dependencies on them are rewired to their own predecessors. Everything else runs or is
    refused with a :class:`ConfigError` naming the hook and the key as written: a hook whose
    kind cannot be told, a serverless code hook not mapped in ``code_steps`` (hook name ->
    ``"module:function"``; ``None`` leaves it out on purpose, with a warning), the NetSuite
    connector, and Request Processor hooks until their converter is installed.
    """
    conv = _V1Converter(code_steps)
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
    for key in list(conv.code_steps):
        target = alias.get(str(key).rstrip("/"))
        if target is None:
            raise ConfigError(
                f"code_steps names hook {key!r}, which is not in the input "
                f"(hooks: {', '.join(repr(n) for n in names)})"
            )
        conv.code_steps[target] = conv.code_steps[key]

    problems: list[str] = []
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
                    conv.warn(
                        f"hook {hname!r}: run_after {ref!r} is not in the input, so this "
                        "hook runs without waiting for it"
                    )
                else:
                    deps.append(target)
            raw_after[hname] = deps
        else:
            raw_after[hname] = [names[i - 1]] if i > 0 else []
        kind = conv.infer_type(hook)
        if hook.get("active") is False:
            conv.warn(f"hook {hname!r} is inactive; left out")
            kind = None
        elif not is_export_hook(hook):
            conv.warn(f"hook {hname!r} does not run on the Export event; left out")
            kind = None
        elif kind == "netsuite":
            problems.append(_netsuite_refusal(hname, hook.get("settings") or {}))
            kind = None
        elif kind == "code":
            if hname not in conv.code_steps:
                problems.append(_code_hook_refusal(hname, hook))
                kind = None
            elif conv.code_steps[hname] is None:
                conv.warn(
                    f"hook {hname!r}: serverless function left out on purpose (code_steps maps "
                    "it to null); it will NOT run"
                )
                kind = None
        elif kind is None:
            problems.append(
                f"hook {hname!r}: cannot tell the step type from its settings keys "
                f"({', '.join(sorted(hook.get('settings') or {})) or 'empty'}); expected "
                "export_configs, request, extract, export_rules, stages or condition"
            )
        kinds[hname] = kind

    cycle = _cycle(raw_after)
    if cycle:
        problems.append(
            f"hook {cycle[0]!r}: run_after forms a cycle ({' -> '.join(cycle)}); remove one of "
            "these run_after entries"
        )
    refused = bool(problems)  # keep going: every problem is reported at once
    # A Request Processor hook becomes a chain of steps: hooks running after it follow its last.
    rp_steps: dict[str, list[dict[str, Any]]] = {}
    for i, hook in enumerate(hooks):
        if kinds[names[i]] == "request_processor" and names[i] not in rp_steps:
            converted = convert_request_processor(hook, names[i], conv.warn)
            meta = {k: v for k, v in hook.items() if k not in ("settings", "secrets", "run_after")}
            for rp_step in converted:
                if meta:
                    rp_step["extra"] = {"hook": meta}
                if hook.get("queues"):
                    rp_step.setdefault("queues", list(hook["queues"]))
            rp_steps[names[i]] = converted

    def resolve(dep: str, seen: frozenset[str] = frozenset()) -> list[str]:
        if dep in rp_steps:
            return [rp_steps[dep][-1]["name"]]
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
        after: list[str] = []
        for dep in raw_after[hname]:
            for resolved in resolve(dep):
                if resolved not in after and resolved != hname:
                    after.append(resolved)
        if kind == "request_processor":
            rp_steps[hname][0]["after"] = after
            steps.extend(rp_steps[hname])
            continue
        step = conv.convert(hook, hname, kind)
        step["after"] = after
        problems.extend(_check_step(step, conv.paths.get(hname, {})))
        steps.append(step)
    if problems or refused:
        raise ConfigError("cannot load these Rossum hooks", problems)
    if not steps:
        raise ConfigError("no usable export hooks in the input", conv.warnings)
    data: dict[str, Any] = {
        "name": name or "rossum-v1-pipeline",
        "steps": steps,
        "origin": "rossum_v1",
        "warnings": conv.warnings,
    }
    if compat:
        data["compat"] = dict(compat)
    return validate_pipeline(data)


_STEP_ADAPTER: TypeAdapter[Any] = TypeAdapter(Step)
_INTERNAL_TO_WRITTEN = {
    "outputs": "export_configs",
    "sources": "extract",
    "export_rules": "export_rules",
}


def _loc_text(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out.lstrip(".")


def _written(internal: str, paths: Mapping[str, str]) -> str:
    """The user's spelling of an internal path (longest known prefix wins)."""
    for prefix in sorted(paths, key=len, reverse=True):
        if (
            internal == prefix
            or internal.startswith(prefix + ".")
            or internal.startswith(prefix + "[")
        ):
            return paths[prefix] + internal[len(prefix) :]
    head, sep, rest = internal.partition(".")
    bracket = head.find("[")
    root = head if bracket < 0 else head[:bracket]
    if root in _INTERNAL_TO_WRITTEN:
        head = _INTERNAL_TO_WRITTEN[root] + head[len(root) :]
    return f"{head}{sep}{rest}"


def _check_step(step: Mapping[str, Any], paths: Mapping[str, str]) -> list[str]:
    """Validate one converted hook; errors name the hook and the settings key as written."""
    try:
        _STEP_ADAPTER.validate_python(step)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            loc = list(err.get("loc", ()))
            if loc and loc[0] == step.get("type"):
                loc = loc[1:]  # the discriminator tag pydantic puts first
            internal = _loc_text(loc)
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            where = f"settings.{_written(internal, paths)}" if internal else "settings"
            if internal.startswith(("function", "queues")):
                where = _written(internal, paths)
            out.append(f"hook {step['name']!r}: {where}: {msg}")
        return out
    return []
