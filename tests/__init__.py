"""Test suite: real videos, real great_expectations, real DVC."""
