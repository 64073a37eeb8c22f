"""Autobase: many writers, one deterministic view (apply loop, membership, checkpoints)."""
