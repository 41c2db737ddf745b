"""Sessions (app.graphql.types.sessions): login and refresh, passwords, single sign-on, sign-up."""
