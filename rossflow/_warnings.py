"""Known, harmless deprecation warnings of third-party packages, filtered narrowly (by category
and by the module that raises them) so that every ``rossflow`` command starts quietly while our
own warnings and any new ones still show."""

from __future__ import annotations

import warnings


def quiet_known_third_party_warnings() -> None:
    try:
        from cryptography.utils import CryptographyDeprecationWarning
    except ImportError:  # pragma: no cover - cryptography comes with paramiko/asyncssh
        return
    # asyncssh registers DSA (ssh-dss) support at import time; we never offer or accept DSA keys.
    warnings.filterwarnings(
        "ignore", category=CryptographyDeprecationWarning, module=r"asyncssh(\.|$)"
    )
    # paramiko does the same for TripleDES/DSA on some cryptography releases.
    warnings.filterwarnings(
        "ignore", category=CryptographyDeprecationWarning, module=r"paramiko(\.|$)"
    )
