"""Archival memory: the LanceDB store of document chunks and its search."""
