"""Devices connecting: MQTT uplinks and downlinks (docs/mqtt.md)."""
