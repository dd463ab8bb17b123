"""Quality gates built on great_expectations."""
