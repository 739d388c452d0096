"""Archival memory: the LanceDB store of document chunks (store.py) and its search (search.py)."""
