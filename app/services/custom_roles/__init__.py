"""Custom roles (app.graphql.types.custom_roles): named permission sets and group-scoped members."""
