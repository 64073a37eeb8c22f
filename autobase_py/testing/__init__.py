"""Test kit shipped with the library: simulated network, DAG generators, reference models.

Importable by users' tests too (like ``trio.testing``). Nothing here is used by the library's
production code paths.
"""
