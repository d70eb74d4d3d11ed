"""Routing rules: glob semantics, first match wins, Rossum import_rules accepted verbatim."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from rossflow.ingest import RoutingRule, RuleSet
from rossflow.ingest.rules import glob_to_regex


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("invoices/*.pdf", "invoices/a.pdf", True),
        ("invoices/*.pdf", "invoices/sub/a.pdf", False),
        ("receipts/**", "receipts/a.png", True),
        ("receipts/**", "receipts/2024/05/a.png", True),
        ("**/*.pdf", "a.pdf", True),
        ("**/*.pdf", "x/y/z.pdf", True),
        ("*.pdf", "x/a.pdf", False),
        ("inv-??.pdf", "inv-01.pdf", True),
        ("inv-[0-9]*.pdf", "inv-7x.pdf", True),
        ("inv-[!0-9]*.pdf", "inv-7x.pdf", False),
        ("*.PDF", "a.pdf", False),
        ("faktura *.pdf", "faktura č. 1.pdf", True),
    ],
)
def test_glob(pattern: str, path: str, expected: bool) -> None:
    assert bool(glob_to_regex(pattern).match(path)) is expected


def test_first_matching_rule_wins_and_unmatched_is_none() -> None:
    rules = RuleSet.load(
        [
            {"pattern": "invoices/*.pdf", "queue_id": 1, "name": "invoices"},
            {"pattern": "receipts/**", "queue_id": 2, "values": {"upload:unit": 7}},
            {"pattern": "**/*.pdf", "queue_id": 3},
        ]
    )
    assert rules.route("invoices/a.pdf")[1].name == "invoices"  # type: ignore[index]
    index, rule = rules.route("receipts/2024/x.jpg")  # type: ignore[misc]
    assert (index, rule.queue_id, rule.values) == (1, 2, {"upload:unit": "7"})
    assert rules.route("other/a.pdf")[1].queue_id == 3  # type: ignore[index]
    assert rules.route("other/a.png") is None


ROSSUM_CONFIG = {
    "credentials": {"host": "sftp.example.com", "port": "22", "type": "sftp", "username": "u"},
    "import_rules": [
        {
            "path": "/inbox/invoices",
            "queue_id": 8199,
            "file_match_regex": ".*\\.pdf",
            "result_actions": {
                "success": [{"type": "move", "path": "/inbox/done"}],
                "failure": [{"type": "move", "path": "/inbox/error"}],
            },
        },
        {"path": "/inbox/receipts", "queue_id": 8200, "file_match_regex": "^rcpt-.*\\.(png|jpg)$"},
    ],
}


def test_rossum_import_rules_verbatim() -> None:
    rules = RuleSet.load(ROSSUM_CONFIG)  # the whole scheduled-import configuration
    assert [r.queue_id for r in rules] == [8199, 8200]
    first = rules.rules[0]
    assert first.success_path() == "/inbox/done" and first.failure_path() == "/inbox/error"
    assert rules.route("invoices/a.pdf", "/inbox/invoices/a.pdf")[1].queue_id == 8199  # type: ignore[index]
    # Rossum's path means "directly in that folder".
    assert rules.route("invoices/x/a.pdf", "/inbox/invoices/x/a.pdf") is None
    assert rules.route("invoices/a.txt", "/inbox/invoices/a.txt") is None
    assert rules.route("receipts/rcpt-1.png", "/inbox/receipts/rcpt-1.png")[1].queue_id == 8200  # type: ignore[index]
    assert rules.route("receipts/x-rcpt-1.png", "/inbox/receipts/x-rcpt-1.png") is None
    assert RuleSet.load(ROSSUM_CONFIG["import_rules"]).rules == rules.rules
    assert rules.absolute_folders() == ["/inbox/invoices", "/inbox/receipts"]
    assert first.relative_in_rule("invoices/a.pdf") == "a.pdf"


def test_relative_path_rules_and_recursion() -> None:
    flat = RoutingRule(path="invoices", queue_id=1)
    deep = RoutingRule(path="invoices", queue_id=1, recursive=True)
    assert flat.matches("invoices/a.pdf", "/in/invoices/a.pdf")
    assert not flat.matches("invoices/2024/a.pdf", "/in/invoices/2024/a.pdf")
    assert deep.matches("invoices/2024/a.pdf", "/in/invoices/2024/a.pdf")
    assert deep.relative_in_rule("invoices/2024/a.pdf") == "2024/a.pdf"
    assert not deep.matches("invoices-old/a.pdf", "/in/invoices-old/a.pdf")


@pytest.mark.parametrize(
    "bad",
    [
        {"queue_id": 1},  # no condition at all
        {"pattern": "*", "queue_id": "x"},
        {"file_match_regex": "([", "queue_id": 1},
        {
            "pattern": "*",
            "queue_id": 1,
            "result_actions": {"success": [{"type": "copy", "path": "/x"}]},
        },
    ],
)
def test_invalid_rules_are_refused(bad: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError):
        RuleSet.load([bad])


def test_load_shapes() -> None:
    rule = {"pattern": "**", "queue_id": 5}
    assert len(RuleSet.load({"rules": [rule]})) == 1
    assert len(RuleSet.load(rule)) == 1
    assert len(RuleSet.load([RoutingRule(**rule)])) == 1
    with pytest.raises(ValueError):
        RuleSet.load("not rules")
