"""Plain-Python domain logic of rossflow's export pipelines (no Prefect, no network).

Modules: ``config`` (pipeline models), ``loading`` / ``checks`` (loading and load-time
checks), ``rossum_hooks`` (Rossum hook converter), ``context`` (template context from Rossum's
export JSON), ``templating`` / ``tabular`` (file rendering), ``placeholders`` (REST
placeholders and JSON-templating operators), ``extract`` (JMESPath/XPath/regex), ``evaluate``
(safe conditions), ``filenames`` (SFTP/S3 paths), ``steps`` (per-step pure logic) and
``errors``. See ``README.md`` in this package for the native YAML format.
"""

from rossflow.export.config import PipelineConfig
from rossflow.export.context import ExportContext, build_context
from rossflow.export.errors import ConfigError, ExportError, StepError, redact
from rossflow.export.evaluate import Condition, compile_condition
from rossflow.export.loading import load_pipeline
from rossflow.export.templating import RenderedFile, render

__all__ = [
    "Condition",
    "ConfigError",
    "ExportContext",
    "ExportError",
    "PipelineConfig",
    "RenderedFile",
    "StepError",
    "build_context",
    "compile_condition",
    "load_pipeline",
    "redact",
    "render",
]
