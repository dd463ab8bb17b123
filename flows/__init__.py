"""Prefect 3 flows over the DVC pipeline: ingest, train, evaluate_and_promote and pipeline (all of them)."""
