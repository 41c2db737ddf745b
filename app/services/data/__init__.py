"""Device data (app.graphql.types.data): measurements, events, alarms, operations and retention."""
