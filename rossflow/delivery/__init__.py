"""Delivery adapters: push exported documents to an ERP over REST, to SFTP or to S3.

Plain Python (no Prefect flows or tasks) so that they can be tested against the local stand-ins
in :mod:`rossflow.localstack` and reused by the ingest side for listing, reading and moving.
"""
