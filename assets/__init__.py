"""Thin Dagster assets and asset checks, one module per stage.

An asset reads its inputs, calls framework-free code from ``idglow``, ``training`` or
``evaluation``, writes its output atomically under the storage root, and returns a
``MaterializeResult`` with URIs, counts, content hashes and a data version.
"""
