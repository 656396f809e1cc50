"""Executors run plans. ``local`` runs on one process: Polars for keys, JAX for values."""
