"""People (app.graphql.types.people): users, members, invitations and API tokens."""
