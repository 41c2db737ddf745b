"""The durable change log of each tenant, and what reads it: named consumers, webhooks, standing shares."""
