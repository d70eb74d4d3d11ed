"""Prefect block with the named secrets a pipeline refers to as ``{secret.name}``."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr


class PipelineSecrets(Block):
    """Secret values for ``{secret.x}`` placeholders (never logged, redacted from artifacts)."""

    _block_type_name = "Rossflow Pipeline Secrets"
    _block_type_slug = "rossflow-pipeline-secrets"
    _description = "Named secrets used by export pipeline placeholders such as {secret.api_key}."

    values: dict[str, SecretStr] = Field(default_factory=dict)
