"""The contract between edges and room actors.

Everything that crosses NATS is defined here and nowhere else: subjects
(`subjects`), KV buckets and keys (`buckets`), the messages themselves
(`commands`, `events`, `control`, `state`), error codes (`errors`), WebSocket
close codes (`closecodes`) and their JSON codec (`codec`). Payloads are JSON so
that `nats sub` and `nats kv get` show readable values.
"""

SCHEMA_VERSION = "1"
"""Bumped when a message changes incompatibly; new fields with defaults do not bump it."""

__all__ = ["SCHEMA_VERSION"]
