"""Shared pytest configuration: fixtures live in tests/fixtures/*, one module per kind of server."""

pytest_plugins = [
    "tests.fixtures.sandbox",
    "tests.fixtures.servers",
    "tests.fixtures.prefect",
    "tests.fixtures.postgres",
]
