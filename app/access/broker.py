"""What an MQTT device may do at the broker: the rules behind the broker's HTTP hooks (app.http.mqtt).

The broker (RabbitMQ's `rabbitmq_auth_backend_http`; EMQX's HTTP authorizer asks the same) asks
four questions: may this client log in (`AccessGate.broker_login`), enter this virtual host,
touch this queue or exchange, and publish or subscribe on this topic (this module). Only the
first needs the database; the others are answered from the names alone, because the broker asks
them for every subscription and (until it caches the answer) every publish.

Names: a device's MQTT username **and** client id are its GraphQL id (`Device` global id, which
names its tenant), its password a device token. The client id is bound too: a broker hands a
client id's persistent session (its queued downlinks) to whoever connects with it next, so
letting a device pick another's client id would let it read that device's operations.

Topics (docs/mqtt.md, API.md): a device publishes `t/<tenant>/d/<device>/up/measurements|events|alarms`
and `…/up/operations/<operation id>`, and subscribes within `t/<tenant>/d/<device>/…` (its
`down/operations` and `errors`) — nothing of another device or tenant, no wildcard above its own
device. RabbitMQ hands topics over as AMQP routing keys (`/` → `.`, `+` → `*`), EMQX as they are:
both arrive here as a list of levels.
"""

from __future__ import annotations

from app import ids

EXCHANGE = "amq.topic"  # where RabbitMQ's MQTT plugin publishes and binds
WILDCARDS = frozenset({"+", "*", "#"})  # MQTT's and AMQP's spellings of the topic wildcards


def device_of_username(username: str, client_id: str | None) -> tuple[str, int] | None:
    """(tenant, device) a username names, when the client id is the same; None otherwise."""
    if client_id is not None and client_id != username:
        return None
    decoded = ids.decode(username)
    if decoded is None or decoded[0] != "Device":
        return None
    return decoded[1], decoded[2]


def vhost_allowed(username: str, client_id: str | None, vhost: str, expected: str) -> bool:
    return device_of_username(username, client_id) is not None and vhost == expected


def resource_allowed(username: str, client_id: str | None, resource: str, name: str, permission: str) -> bool:
    """The plugin's own plumbing for this client: publishing to and binding from the MQTT
    exchange, and the client's own subscription queues (named after its client id)."""
    if device_of_username(username, client_id) is None:
        return False
    if resource == "exchange":
        return name == EXCHANGE and permission in ("read", "write")
    if resource == "queue":
        return name in (f"mqtt-subscription-{username}qos0", f"mqtt-subscription-{username}qos1") and \
            permission in ("configure", "read", "write")
    return False


def topic_allowed(username: str, client_id: str | None, levels: list[str], permission: str) -> bool:
    """Publish (`write`) on its own uplinks, subscribe (`read`) within its own device's topics."""
    device = device_of_username(username, client_id)
    if device is None or len(levels) < 5 or levels[:4] != ["t", device[0], "d", username]:
        return False
    rest = levels[4:]
    if permission == "read":  # its own subtree only: down/operations, errors (or a wildcard over them)
        return True
    if permission != "write" or WILDCARDS & set(rest):
        return False
    if len(rest) == 2:
        return rest[0] == "up" and rest[1] in ("measurements", "events", "alarms")
    return len(rest) == 3 and rest[:2] == ["up", "operations"] and bool(rest[2])


def routing_levels(routing_key: str) -> list[str]:
    return routing_key.split(".")


def topic_levels(topic: str) -> list[str]:
    return topic.split("/")


def uplink_of(routing_key: str) -> tuple[str, int, str, str | None] | None:
    """(tenant, device, kind, operation id) of a routing key the bridge received; None for anything
    else (the bridge's queue is bound to `t.*.d.*.up.#`, and the broker let it through `topic_allowed`)."""
    levels = routing_levels(routing_key)
    if len(levels) not in (6, 7) or levels[0] != "t" or levels[2] != "d" or levels[4] != "up":
        return None
    device = device_of_username(levels[3], None)
    if device is None or device[0] != levels[1] or not topic_allowed(levels[3], None, levels, "write"):
        return None
    return device[0], device[1], levels[5], levels[6] if len(levels) == 7 else None


def downlink(tenant_id: str, device_id: int, *what: str) -> str:
    """The routing key of a device's topic `t/<tenant>/d/<device>/<what…>` (down/operations, errors)."""
    return ".".join(["t", tenant_id, "d", ids.encode("Device", tenant_id, device_id), *what])


def mqtt_topic(routing_key: str) -> str:
    return routing_key.replace(".", "/")
