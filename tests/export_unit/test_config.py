"""Pipeline configuration: Rossum v1 hooks verbatim, native YAML, DAG validation."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from rossflow.export.config import (
    CleanStep,
    EvaluateStep,
    ExtractStep,
    PipelineConfig,
    RestStep,
    S3Step,
    SftpStep,
    TemplateStep,
)
from rossflow.export.errors import ConfigError
from rossflow.export.loading import dump_native, load_pipeline

README = Path(__file__).parents[2] / "rossflow" / "export" / "README.md"


def hook(name: str, settings: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "settings": settings, **extra}


def readme_yaml() -> str:
    match = re.search(r"```yaml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert match, "README must contain a yaml example"
    return match.group(1)


# ----------------------------------------------------------------------- Rossum v1 verbatim


def test_anchor_templating_settings_load_verbatim(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline([hook("2. Templating", v1_settings["templating_anchor"])])
    step = cfg.steps[0]
    assert isinstance(step, TemplateStep)
    out = step.outputs[0]
    assert out.key == "example_invoice_template"
    assert out.content_encoding == "utf-8"
    assert out.template_text == "…"
    # both template forms were given: the single string wins, the other is preserved + warned
    assert step.extra["export_configs"]["0"]["file_content_template_multiline"] == [
        "line1",
        "line2",
    ]
    assert any("both file_content_template" in w for w in cfg.warnings)
    assert cfg.origin == "rossum_v1"


@pytest.mark.parametrize(
    "key",
    [
        "templating_original_b64",
        "templating_csv",
        "templating_csv_items",
        "templating_xml",
        "templating_tree",
    ],
)
def test_docs_templating_examples_load(v1_settings: dict[str, Any], key: str) -> None:
    cfg = load_pipeline([hook("templating", v1_settings[key])])
    step = cfg.steps[0]
    assert isinstance(step, TemplateStep)
    assert step.outputs[0].undefined == "lenient"  # Rossum renders missing fields as ""


def test_multiline_rows_are_joined_with_newlines(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline([hook("t", v1_settings["templating_xml"])])
    text = cfg.steps[0].outputs[0].template_text  # type: ignore[union-attr]
    assert text.startswith("<ROSSUM>\n  <INVOICE>\n")
    assert text.endswith("</INVOICE>\n</ROSSUM>")


@pytest.mark.parametrize(
    "key",
    [
        "rest_simple",
        "rest_oauth2_full",
        "rest_original_file",
        "rest_multipart",
        "rest_azure_form",
        "rest_status_resolver",
    ],
)
def test_rest_examples_load_verbatim(v1_settings: dict[str, Any], key: str) -> None:
    cfg = load_pipeline([hook("3. REST", v1_settings[key])])
    step = cfg.steps[0]
    assert isinstance(step, RestStep)
    assert step.request.method == "POST"
    assert step.timeout_s == 120
    assert step.mode == "wait"
    assert step.rossum_compat_any_status_is_success is False
    assert any("non-2xx" in w for w in cfg.warnings)


def test_rest_oauth2_example_fields(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline([hook("rest", v1_settings["rest_oauth2_full"])])
    step = cfg.steps[0]
    assert isinstance(step, RestStep)
    assert step.condition == "@{api_gate}"
    assert step.response_headers_reference_key == "export_reply_headers"
    assert step.response_payload_reference_key == "export_reply_payload"
    assert not isinstance(step.auth, str) and step.auth is not None
    assert step.auth.data["client_secret"] == "{secret.client_secret}"
    assert step.auth.body_kind == "form"
    assert step.request.body_kind == "raw"
    # the referenced template is not part of this input: a warning, not an error (v1 import)
    assert any("export_annotation_to_csv" in w for w in cfg.warnings)


def test_rest_multipart_and_status_resolver(v1_settings: dict[str, Any]) -> None:
    multi = load_pipeline([hook("m", v1_settings["rest_multipart"])]).steps[0]
    assert isinstance(multi, RestStep)
    assert multi.request.body_kind == "multipart"
    assert multi.request.file_key == "file"
    resolver = load_pipeline([hook("r", v1_settings["rest_status_resolver"])]).steps[0]
    assert isinstance(resolver, RestStep)
    assert resolver.status_code_resolver.error == [403, 500]
    assert resolver.classify_status(200) == "success"
    assert resolver.classify_status(201) == "warning"
    assert resolver.classify_status(403) == "error"
    assert resolver.classify_status(404) == "error"  # Rossum would call this a success


def test_rest_empty_urls_are_reported(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline([hook("azure", v1_settings["rest_azure_form"])])
    assert any("request.url is empty" in w for w in cfg.warnings)
    assert any("auth.url is empty" in w for w in cfg.warnings)


@pytest.mark.parametrize("key", ["extract_anchor", "extract_docs"])
def test_extract_examples_load(v1_settings: dict[str, Any], key: str) -> None:
    cfg = load_pipeline([hook("4. Extract", v1_settings[key])])
    step = cfg.steps[0]
    assert isinstance(step, ExtractStep)
    assert step.writeback is True
    assert all(s.format == "json" for s in step.sources)
    assert step.sources[0].extract_rules[0].value_path


def test_extract_anchor_condition(v1_settings: dict[str, Any]) -> None:
    step = load_pipeline([hook("x", v1_settings["extract_anchor"])]).steps[0]
    assert isinstance(step, ExtractStep)
    assert step.sources[0].condition == "@{api_gate}"
    assert step.sources[0].extract_rules[0].target_schema_id == "erp_api_etag"


def test_evaluator_example_loads(v1_settings: dict[str, Any]) -> None:
    step = load_pipeline([hook("5. Evaluator", v1_settings["evaluator"])]).steps[0]
    assert isinstance(step, EvaluateStep)
    assert step.condition == "r.field.api1_status_code != '201'"
    assert step.fails_when_true


def test_file_storage_example(v1_settings: dict[str, Any]) -> None:
    step = load_pipeline([hook("6. SFTP", v1_settings["file_storage"])]).steps[0]
    assert isinstance(step, SftpStep)
    assert step.credentials["host"] == "sftp.example.com"
    objects = step.export_rules[0].export_object_configurations
    assert [o.type for o in objects] == ["annotation_content", "document", "custom_format"]
    assert objects[2].export_reference_key == "export_annotation_to_csv"
    assert step.filename_collision == "replace"


def test_file_storage_s3_by_credentials_type(v1_settings: dict[str, Any]) -> None:
    step = load_pipeline([hook("S3", v1_settings["file_storage_s3"])]).steps[0]
    assert isinstance(step, S3Step)
    assert step.credentials["bucket_name"] == "acme-rossum-export"


@pytest.mark.parametrize("key", ["legacy_sftp", "legacy_sftp_simple"])
def test_legacy_sftp_export(v1_settings: dict[str, Any], key: str) -> None:
    step = load_pipeline([hook("SFTP export", v1_settings[key])]).steps[0]
    assert isinstance(step, SftpStep)
    assert step.export_rules[0].path_to_directory == "/upload"
    assert step.template_variables[0].schema_id == "document_id"


def test_purge_hook_with_empty_settings_is_clean() -> None:
    cfg = load_pipeline([hook("0. Custom format templating purge", {})])
    assert isinstance(cfg.steps[0], CleanStep)


def test_full_chain_with_run_after_urls(v1_settings: dict[str, Any]) -> None:
    base = "https://example.rossum.app/api/v1/hooks"
    hooks = [
        hook(
            "5. Evaluator", v1_settings["evaluator"], url=f"{base}/5", id=5, run_after=[f"{base}/4"]
        ),
        hook(
            "4. Extractor",
            v1_settings["extract_docs"],
            url=f"{base}/4",
            id=4,
            run_after=[f"{base}/3"],
        ),
        hook("1. Purge", {}, url=f"{base}/1", id=1, run_after=[]),
        hook(
            "2. Templating",
            v1_settings["templating_csv"],
            url=f"{base}/2",
            id=2,
            run_after=[f"{base}/1"],
        ),
        hook(
            "3. REST",
            v1_settings["rest_oauth2_full"],
            url=f"{base}/3",
            id=3,
            run_after=["2. Templating"],
        ),
    ]
    cfg = load_pipeline({"results": hooks, "pagination": {}})
    order = [s.name for s in cfg.topological_order()]
    assert order == ["1. Purge", "2. Templating", "3. REST", "4. Extractor", "5. Evaluator"]
    assert cfg.step("4. Extractor").after == ["3. REST"]
    # everything is produced upstream now: no reference warnings
    assert not [w for w in cfg.warnings if "reference key" in w]
    assert cfg.step("3. REST").extra["hook"]["id"] == 3


def test_list_order_defines_chain_without_run_after(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline(
        [
            hook("templating", v1_settings["templating_csv"]),
            hook("rest", v1_settings["rest_simple"]),
            hook("sftp", v1_settings["file_storage"]),
        ]
    )
    assert [s.after for s in cfg.steps] == [[], ["templating"], ["rest"]]


def test_unknown_keys_are_preserved_and_warned(v1_settings: dict[str, Any]) -> None:
    settings = v1_settings["rest_simple"]
    settings["debug"] = True
    settings["request"]["verify_ssl"] = False
    cfg = load_pipeline(
        [hook("rest", settings, queues=["https://x.rossum.app/api/v1/queues/1"], brand_new_field=1)]
    )
    step = cfg.steps[0]
    assert step.extra["debug"] is True
    assert step.extra["request"] == {"verify_ssl": False}
    assert step.extra["hook"]["brand_new_field"] == 1
    assert any("debug" in w for w in cfg.warnings)
    assert any("brand_new_field" in w for w in cfg.warnings)


def test_unknown_nested_keys_do_not_crash(v1_settings: dict[str, Any]) -> None:
    storage = v1_settings["file_storage"]
    storage["export_rules"][0]["compression"] = "zip"
    storage["export_rules"][0]["export_object_configurations"][0]["encoding"] = "utf-16"
    legacy = v1_settings["legacy_sftp"]
    legacy["template_variables"][0]["padding"] = 3
    extract = v1_settings["extract_docs"]
    extract["extract"][0]["extract_rules"][0]["cast"] = "int"
    rest = v1_settings["rest_status_resolver"]
    rest["status_code_resolver"]["info"] = [200]
    cfg = load_pipeline(
        [
            hook("sftp", storage),
            hook("legacy", legacy),
            hook("extract", extract),
            hook("rest", rest),
        ]
    )
    nested = {k: v for s in cfg.steps for k, v in s.extra.get("nested", {}).items()}
    assert nested == {
        "hook 'sftp' export_rules[0]": {"compression": "zip"},
        "hook 'sftp' export_rules[0].export_object_configurations[0]": {"encoding": "utf-16"},
        "hook 'legacy' template_variables[0]": {"padding": 3},
        "hook 'extract' extract[0].rules[0]": {"cast": "int"},
        "hook 'rest' status_code_resolver": {"info": [200]},
    }
    assert sum("unknown settings keys" in w for w in cfg.warnings) == 5


def test_inactive_and_non_export_hooks_are_left_out_and_rewired(
    v1_settings: dict[str, Any],
) -> None:
    cfg = load_pipeline(
        [
            hook("templating", v1_settings["templating_csv"]),
            hook("old", v1_settings["rest_simple"], active=False),
            hook("validation", {"condition": "True"}, events=["annotation_content.updated"]),
            hook("rest", v1_settings["rest_simple"]),
        ]
    )
    assert [s.name for s in cfg.steps] == ["templating", "rest"]
    assert cfg.step("rest").after == ["templating"]
    joined = "\n".join(cfg.warnings)
    assert "'old' is inactive" in joined
    assert "Export event" in joined


def test_unrecognised_and_empty_request_processor_hooks_are_refused(
    v1_settings: dict[str, Any],
) -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline(
            [hook("templating", v1_settings["templating_csv"]), hook("mystery", {"foo": 1})]
        )
    assert "hook 'mystery': cannot tell the step type" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_pipeline([hook("rp", {"stages": []})])
    assert "hook 'rp': invalid Request Processor settings" in str(err.value)
    assert "settings.stages: is empty" in str(err.value)


def test_inline_secrets_become_secretstr(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline([hook("rest", v1_settings["rest_simple"], secrets={"token": "s3cr3t!"})])
    step = cfg.steps[0]
    assert step.secrets["token"].get_secret_value() == "s3cr3t!"
    assert "s3cr3t" not in repr(step) and "s3cr3t" not in cfg.model_dump_json()
    assert any("inline secrets" in w for w in cfg.warnings)


def test_duplicate_hook_names_are_renamed(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline(
        [
            hook("Export", v1_settings["templating_csv"]),
            hook("Export", v1_settings["rest_simple"]),
        ]
    )
    assert [s.name for s in cfg.steps] == ["Export", "Export (2)"]


def test_unknown_run_after_is_dropped_with_warning(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline([hook("t", v1_settings["templating_csv"], run_after=["nope/99"])])
    assert cfg.steps[0].after == []
    assert any("nope/99" in w for w in cfg.warnings)


def test_single_hook_and_hooks_wrapper(v1_settings: dict[str, Any]) -> None:
    single = load_pipeline(hook("t", v1_settings["templating_csv"]))
    wrapped = load_pipeline({"name": "mine", "hooks": [hook("t", v1_settings["templating_csv"])]})
    assert single.steps[0].name == wrapped.steps[0].name == "t"
    assert wrapped.name == "mine"


def test_v1_json_text_and_file(tmp_path: Path, v1_settings: dict[str, Any]) -> None:
    text = json.dumps([hook("t", v1_settings["templating_csv"])])
    assert load_pipeline(text).steps[0].name == "t"
    path = tmp_path / "hooks.json"
    path.write_text(text, encoding="utf-8")
    assert load_pipeline(path).steps[0].name == "t"
    assert load_pipeline(str(path)).steps[0].name == "t"


def test_unsafe_v1_evaluator_condition_is_rejected() -> None:
    with pytest.raises(ConfigError, match="__import__"):
        load_pipeline([hook("eval", {"condition": "__import__('os').system('id')"})])


# ----------------------------------------------------------------------------- native


def test_readme_example_loads() -> None:
    cfg = load_pipeline(readme_yaml())
    assert cfg.origin == "native"
    assert [s.name for s in cfg.topological_order()] == [
        "clean",
        "render",
        "post_to_erp",
        "keep_erp_id",
        "check",
        "archive",
    ]
    rest = cfg.step("post_to_erp")
    assert isinstance(rest, RestStep)
    assert rest.auth == "erp" and rest.timeout_s == 120 and rest.retries == 0
    assert cfg.warnings == []
    render = cfg.step("render")
    assert isinstance(render, TemplateStep)
    assert render.outputs[1].tabular == "csv"


def test_native_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(readme_yaml(), encoding="utf-8")
    assert load_pipeline(path).name == "acme-invoices-to-erp"
    assert load_pipeline(path, name="renamed").name == "renamed"


def test_dump_native_roundtrip() -> None:
    cfg = load_pipeline(readme_yaml())
    again = load_pipeline(dump_native(cfg))
    assert again == cfg


def test_v1_import_dumps_to_native(v1_settings: dict[str, Any]) -> None:
    cfg = load_pipeline(
        [
            hook("t", v1_settings["templating_csv"]),
            hook("r", v1_settings["rest_simple"], secrets={"token": "x" * 12}),
        ]
    )
    text = dump_native(cfg)
    assert "x" * 12 not in text
    native = load_pipeline(text)
    assert [s.name for s in native.steps] == ["t", "r"]


def test_template_shorthand_on_step() -> None:
    cfg = load_pipeline(
        {
            "name": "p",
            "steps": [
                {
                    "name": "t",
                    "type": "template",
                    "key": "a.json",
                    "format": "json",
                    "template": '{"id": {{ field.invoice_id | tojson }}}',
                }
            ],
        }
    )
    step = cfg.steps[0]
    assert isinstance(step, TemplateStep)
    assert step.outputs[0].key == "a.json"


def test_defaults_apply_to_steps() -> None:
    cfg = load_pipeline(
        {
            "name": "p",
            "defaults": {
                "timeout_s": 30,
                "mode": "retry",
                "retries": 5,
                "success_codes": [200, 201],
                "filename_collision": {"replace": False},
            },
            "steps": [
                {"name": "r", "type": "rest", "request": {"url": "https://x.example"}},
                {
                    "name": "r2",
                    "type": "rest",
                    "timeout_s": 5,
                    "mode": "wait",
                    "request": {"url": "https://x.example"},
                },
                {
                    "name": "s",
                    "type": "s3",
                    "export_rules": [
                        {
                            "path_to_directory": "a",
                            "objects": [
                                {
                                    "type": "annotation_content",
                                    "format": "json",
                                    "filename_template": "{annotation.id}.json",
                                }
                            ],
                        }
                    ],
                },
            ],
        }
    )
    r, r2, s = cfg.steps
    assert isinstance(r, RestStep) and isinstance(r2, RestStep) and isinstance(s, S3Step)
    assert (r.timeout_s, r.mode, r.retries, r.success_codes) == (30, "retry", 5, [200, 201])
    assert (r2.timeout_s, r2.mode, r2.retries) == (5, "wait", 0)
    assert s.filename_collision == "error"
    assert r.classify_status(201) == "success" and r.classify_status(204) == "error"


def test_compat_switch_accepts_any_status() -> None:
    step = RestStep(
        name="r",
        request={"url": "https://x"},  # type: ignore[arg-type]
        rossum_compat_any_status_is_success=True,
        status_code_resolver={"error": [500]},
    )  # type: ignore[arg-type]
    assert step.classify_status(404) == "success"
    assert step.classify_status(500) == "error"


# ------------------------------------------------------------------------ validation errors


def native(*steps: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"name": "p", "steps": list(steps), **top}


def tpl(name: str, key: str = "k", after: list[str] | None = None) -> dict[str, Any]:
    return {"name": name, "type": "template", "key": key, "template": "x", "after": after or []}


def test_unknown_after_reference() -> None:
    with pytest.raises(ConfigError) as err:
        load_pipeline(native(tpl("a", after=["ghost"])))
    assert "unknown step 'ghost'" in str(err.value)
    assert err.value.problems


def test_cycle_is_reported_with_path() -> None:
    with pytest.raises(ConfigError, match=r"cycle in step dependencies: .*a -> .*b"):
        load_pipeline(native(tpl("a", "k1", ["c"]), tpl("b", "k2", ["a"]), tpl("c", "k3", ["b"])))


def test_self_reference_and_duplicates() -> None:
    with pytest.raises(ConfigError, match="lists itself"):
        load_pipeline(native(tpl("a", after=["a"])))
    with pytest.raises(ConfigError, match="duplicate step names: a"):
        load_pipeline(native(tpl("a", "k1"), tpl("a", "k2")))


def test_consumer_must_run_after_producer() -> None:
    rest = {
        "name": "send",
        "type": "rest",
        "export_reference_key": "k",
        "request": {"url": "https://x", "content": "#{file_content}"},
    }
    with pytest.raises(ConfigError, match="before it is produced"):
        load_pipeline(native(tpl("render"), rest))
    with pytest.raises(ConfigError, match="no step produces"):
        load_pipeline(native({**rest, "export_reference_key": "missing"}))
    ok = load_pipeline(native(tpl("render"), {**rest, "after": ["render"]}))
    assert ok.ancestors("send") == {"render"}


def test_condition_must_reference_upstream_steps() -> None:
    ev = {"name": "check", "type": "evaluate", "condition": "responses.send.status_code != 201"}
    with pytest.raises(ConfigError, match=r"unknown step responses\.send"):
        load_pipeline(native(ev))


def test_bad_template_syntax_names_key_and_line() -> None:
    with pytest.raises(ConfigError, match=r"template 'bad' line 2: syntax error"):
        load_pipeline(
            native(
                {
                    "name": "t",
                    "type": "template",
                    "key": "bad",
                    "template_multiline": ["ok {{ field.x }}", "{% for x in %}"],
                }
            )
        )


def test_template_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError, match="exactly one of template"):
        load_pipeline(
            native(
                {
                    "name": "t",
                    "type": "template",
                    "key": "k",
                    "template": "a",
                    "template_multiline": ["b"],
                }
            )
        )


def test_native_rejects_unknown_keys_and_types() -> None:
    with pytest.raises(ConfigError, match=r"tmplate: Extra inputs are not permitted"):
        load_pipeline(native({**tpl("a"), "tmplate": "typo"}))
    with pytest.raises(ConfigError):
        load_pipeline(native({"name": "x", "type": "ftp"}))


def test_unsafe_when_is_rejected_at_load() -> None:
    with pytest.raises(ConfigError, match="lambda"):
        load_pipeline(native({**tpl("a"), "when": "(lambda: 1)()"}))


def test_extract_rule_syntax_checked_at_load() -> None:
    bad = {
        "name": "x",
        "type": "extract",
        "sources": [{"source_step": "r", "rules": [{"jmespath": "a[", "target_schema_id": "t"}]}],
    }
    rest = {"name": "r", "type": "rest", "request": {"url": "https://x"}}
    with pytest.raises(ConfigError, match="invalid value_path"):
        load_pipeline(native(rest, {**bad, "after": ["r"]}))
    not_rest = {
        "name": "x",
        "type": "extract",
        "after": ["a"],
        "sources": [
            {"source_step": "a", "rules": [{"regex": "id=(\\d+)", "target_schema_id": "t"}]}
        ],
    }
    with pytest.raises(ConfigError, match="is not a rest step"):
        load_pipeline(native(tpl("a"), not_rest))


def test_unknown_auth_reference() -> None:
    with pytest.raises(ConfigError, match="unknown auth 'erp'"):
        load_pipeline(
            native({"name": "r", "type": "rest", "auth": "erp", "request": {"url": "https://x"}})
        )


def test_topological_order_keeps_declaration_order_for_ties() -> None:
    cfg = load_pipeline(native(tpl("z", "k1"), tpl("a", "k2"), tpl("m", "k3", ["z"])))
    assert [s.name for s in cfg.topological_order()] == ["z", "a", "m"]


def test_unrecognised_input() -> None:
    with pytest.raises(ConfigError, match="unrecognised"):
        load_pipeline({"foo": 1})
    with pytest.raises(ConfigError, match="hook 'x': cannot tell the step type"):
        load_pipeline([hook("x", {"unknown": 1})])
    with pytest.raises(ConfigError, match="no usable export hooks"):
        load_pipeline([hook("x", {"condition": "True"}, active=False)])


def test_pipeline_model_direct() -> None:
    cfg = PipelineConfig.model_validate(native(tpl("a")))
    assert cfg.produced_keys() == {"k": "a"}


def test_load_time_checks_name_every_bad_step_at_once() -> None:
    bad_template = {"name": "t", "type": "template", "key": "k", "template": "{% if %}"}
    bad_message = {"name": "e", "type": "evaluate", "require": "1 == 1", "message": "{{ x"}
    bad_when = {**tpl("w", "k2"), "when": "(lambda: 1)()"}
    with pytest.raises(ConfigError) as err:
        load_pipeline(native(bad_template, bad_message, bad_when))
    problems = err.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("step 't': template 'k' line 1")
    assert problems[1].startswith("step 'e': template 'e.message'")
    assert problems[2].startswith("step 'w': ") and "lambda" in problems[2]


def test_v1_condition_on_a_step_that_does_not_run_before_is_a_warning() -> None:
    rest = hook("api", {"request": {"url": "https://erp.example/x", "method": "POST"}})
    check = hook("check", {"condition": "responses.api.status_code != 201"}, run_after=[])
    cfg = load_pipeline([check, rest])
    assert any(
        "condition reads responses.api but does not run after 'api'" in w for w in cfg.warnings
    )
    ev = {"name": "check", "type": "evaluate", "condition": "responses.api.status_code != 201"}
    api = {"name": "api", "type": "rest", "request": {"url": "https://erp.example/x"}}
    with pytest.raises(ConfigError, match="does not run after 'api'"):
        load_pipeline(native(api, ev))
