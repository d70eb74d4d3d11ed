"""Prefect block for an SFTP server, used both as an ingest source and as an export target."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, SecretStr

from rossflow.delivery.sftp import SftpConnectionInfo


class SftpServer(Block):
    """Where and how to reach an SFTP server. Host keys are verified unless you opt out."""

    _block_type_name = "Rossflow SFTP Server"
    _block_type_slug = "rossflow-sftp-server"
    _description = "SFTP host, login (password or private key) and the known host keys."

    host: str
    port: int = 22
    username: str
    password: SecretStr | None = None
    private_key: SecretStr | None = Field(
        default=None, description="PEM/OpenSSH private key text (newlines may be written as \\n)."
    )
    passphrase: SecretStr | None = None
    known_hosts: str = Field(
        default="",
        description="OpenSSH known_hosts lines, e.g. `[host]:2222 ssh-ed25519 AAAA…`",
    )
    verify_host_key: bool = Field(
        default=True, description="Only turn off for throwaway test servers."
    )
    connect_timeout_s: float = 15.0

    def connection_info(self) -> SftpConnectionInfo:
        key = self.private_key
        if key is not None and "\\n" in key.get_secret_value():
            key = SecretStr(key.get_secret_value().replace("\\n", "\n"))
        return SftpConnectionInfo(
            host=self.host,
            port=self.port,
            username=self.username,
            password=self.password,
            private_key=key,
            passphrase=self.passphrase,
            known_hosts=self.known_hosts,
            verify_host_key=self.verify_host_key,
            connect_timeout_s=self.connect_timeout_s,
        )
