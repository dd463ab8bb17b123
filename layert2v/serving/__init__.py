"""Serving: the MLflow pyfunc wrapper of the pipeline."""
