"""Usage (app.graphql.types.usage): daily statistics, summaries, snapshots and exports."""
