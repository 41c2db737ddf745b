"""Sharing across tenants (app.graphql.types.sharing): copyData jobs and device migration."""
