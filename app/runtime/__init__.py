"""Process machinery below the domains: the meter, metrics, throttles, periodic loops, the mail outbox,
idempotency, change announcements and `Platform`. Nothing here imports a domain."""
