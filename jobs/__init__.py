"""Thin Click commands: parse options, call ``uba``, report."""
