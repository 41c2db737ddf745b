"""Tenantry: a multi-tenant GraphQL backend with a PostgreSQL schema and role per tenant."""
