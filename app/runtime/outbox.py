"""The mail outbox: rows written in the same transaction as what they announce (so a mail is
never sent for a rolled-back invitation), delivered afterwards by SMTP when configured and
logged otherwise. Delivery is at-least-once: a row is marked sent after the SMTP server
accepted it."""

from __future__ import annotations

import asyncio
import logging
import smtplib
from email.message import EmailMessage
from urllib.parse import unquote, urlparse

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.transaction import transaction
from app.models.management import outbox
from app.runtime.periodic import every

log = logging.getLogger("tenantry.outbox")


def _send(smtp_url: str, sender: str, recipient: str, subject: str, body: str) -> None:
    url = urlparse(smtp_url)  # smtp://user:password@host:port or smtps://…
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = sender, recipient, subject
    message.set_content(body)
    client_cls = smtplib.SMTP_SSL if url.scheme == "smtps" else smtplib.SMTP
    with client_cls(url.hostname or "localhost", url.port or (465 if url.scheme == "smtps" else 25),
                    timeout=30) as client:
        if url.username:
            client.login(unquote(url.username), unquote(url.password or ""))
        client.send_message(message)


async def deliver(engine: AsyncEngine, *, smtp_url: str | None, sender: str, batch: int = 100) -> int:
    """Deliver up to `batch` pending mails; returns how many were delivered (or logged)."""
    async with transaction(engine) as tx:
        rows = (await tx.execute(select(outbox.c.id, outbox.c.recipient, outbox.c.subject, outbox.c.body)
                                 .where(outbox.c.sent_at.is_(None)).order_by(outbox.c.id).limit(batch)
                                 .with_for_update(skip_locked=True))).all()
        delivered = []
        for row in rows:
            if smtp_url:
                try:
                    await asyncio.to_thread(_send, smtp_url, sender, row.recipient, row.subject, row.body)
                except (OSError, smtplib.SMTPException):
                    log.exception("mail %s to %s not delivered; retried later", row.id, row.recipient)
                    continue
            else:
                log.info("mail to %s: %s\n%s", row.recipient, row.subject, row.body)
            delivered.append(row.id)
        if delivered:
            await tx.execute(update(outbox).where(outbox.c.id.in_(delivered)).values(sent_at=func.now()))
    return len(delivered)


async def periodic(engine: AsyncEngine, interval_seconds: float, *, smtp_url: str | None, sender: str) -> None:
    await every(interval_seconds, lambda: deliver(engine, smtp_url=smtp_url, sender=sender), log=log,
                what="outbox delivery", first_after=interval_seconds)
