"""The operator's shell commands behind `tenantry` (app/cli.py parses and dispatches)."""
