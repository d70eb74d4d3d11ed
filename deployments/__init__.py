"""rossflow's Prefect deployments: ``prefect.yaml`` (``prefect deploy``, workers) and ``serve.py``
(``rossflow serve``, one process). See docs/triggers.md."""
