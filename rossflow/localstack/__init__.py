"""Local stand-ins for the systems around Rossum (ERP, SFTP, S3) and helpers to run them."""
