"""bgremove core: the service client, the image pipeline, config and backends."""

__version__ = "0.1.0"
