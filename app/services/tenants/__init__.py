"""Tenants (app.graphql.types.tenants, .options): the registry's queries, provisioning, lifecycle,
limits, placement, bootstrap and tenant options."""
