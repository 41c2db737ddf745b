"""The Relay `Node` interface: every object with a global id (app.ids) implements it."""

from __future__ import annotations

import strawberry


@strawberry.interface(description="An object with a global id: unique across tenants and types, opaque.")
class Node:
    id: strawberry.ID
