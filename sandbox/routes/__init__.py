"""HTTP handlers of the sandbox, one module per API resource (assembled by :mod:`sandbox.app`)."""
