"""Audit logs: the management plane's records and each tenant's data-plane records."""
