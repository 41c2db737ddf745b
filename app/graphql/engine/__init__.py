"""How GraphQL documents run: the executor, the parse/validate fast path, compiled reads and the
input boundary. Every reach into graphql-core's or strawberry's internals lives here."""
