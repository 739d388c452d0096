"""Ingest: files -> sections (discover, parse) -> chunks (chunk) -> vectors (embed); engines drive the steps (local)."""
