"""The outbox delivers through a real SMTP conversation (a tiny server started by the test)."""

from __future__ import annotations

import asyncio

from sqlalchemy import text

from app.runtime.outbox import deliver
from app.runtime.platform import Platform
from tests.conftest import Api, World, unique


class TinySMTP:
    """Just enough of RFC 5321 for smtplib: records each message's recipients and data."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], str]] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 tiny ESMTP\r\n")
        recipients: list[str] = []
        while line := (await reader.readline()).decode():
            verb = line[:4].upper()
            if verb in ("EHLO", "HELO"):
                writer.write(b"250 tiny\r\n")
            elif verb == "MAIL":
                recipients = []
                writer.write(b"250 ok\r\n")
            elif verb == "RCPT":
                recipients.append(line.split(":", 1)[1].strip().strip("<>"))
                writer.write(b"250 ok\r\n")
            elif verb == "DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                data = (await reader.readuntil(b"\r\n.\r\n")).decode()
                self.messages.append((recipients, data))
                writer.write(b"250 queued\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


async def test_invitations_are_mailed_by_smtp_and_marked_sent(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    email = f"{unique('mail')}@x.test"
    await api.gql('mutation($e: String!) { inviteMember(email: $e, role: "READER") { id } }', {"e": email},
                  token=t.token, tenant=t.id)
    smtp = TinySMTP()
    server = await asyncio.start_server(smtp.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        while await deliver(platform.db.app, smtp_url=f"smtp://127.0.0.1:{port}", sender="t@tenantry.test"):
            pass
    finally:
        server.close()
        await server.wait_closed()
    mine = [data for recipients, data in smtp.messages if recipients == [email]]
    assert len(mine) == 1
    assert "tinv_" in mine[0]
    async with platform.db.owner.connect() as conn:
        unsent = (await conn.execute(text("SELECT count(*) FROM tenantry.outbox WHERE recipient = :e AND "
                                          "sent_at IS NULL"), {"e": email})).scalar_one()
    assert unsent == 0


async def test_undeliverable_mail_stays_queued(api: Api, world: World, platform: Platform) -> None:
    t = await world.tenant()
    email = f"{unique('mail')}@x.test"
    await api.gql('mutation($e: String!) { inviteMember(email: $e, role: "READER") { id } }', {"e": email},
                  token=t.token, tenant=t.id)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens on that port any more
    await deliver(platform.db.app, smtp_url=f"smtp://127.0.0.1:{port}", sender="t@tenantry.test")
    async with platform.db.owner.connect() as conn:
        unsent = (await conn.execute(text("SELECT count(*) FROM tenantry.outbox WHERE recipient = :e AND "
                                          "sent_at IS NULL"), {"e": email})).scalar_one()
    assert unsent == 1
