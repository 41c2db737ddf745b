"""Inventory (app.graphql.types.inventory, .device_templates): devices, groups, device
credentials and device templates."""
