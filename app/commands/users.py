"""`tenantry users …`: list, reset a password, disable and enable accounts."""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Callable

import orjson
from rich.table import Table

from app.commands.common import console, run
from app.db.transaction import transaction
from app.runtime.platform import Platform
from app.settings import Settings


def cmd_users_list(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.sessions.accounts import list_users

    async def work(platform: Platform) -> int:
        async with transaction(platform.db.app) as tx:
            found = await list_users(tx)
        if args.json:
            for u in found:
                sys.stdout.write(orjson.dumps({"id": str(u.id), "email": u.email, "createdAt": u.created_at,
                                               "lastLoginAt": u.last_login_at, "disabled": u.disabled,
                                               "memberships": u.memberships}).decode() + "\n")
            return 0
        table = Table("id", "email", "memberships", "last login", "disabled")
        for u in found:
            table.add_row(str(u.id), u.email, str(u.memberships),
                          u.last_login_at.isoformat(timespec="seconds") if u.last_login_at else "-",
                          "yes" if u.disabled else "")
        console.print(table)
        return 0

    return run(settings, work)


def cmd_users_reset_password(settings: Settings, args: argparse.Namespace) -> int:
    from app.services.sessions.accounts import operator_set_password

    password = args.password or secrets.token_urlsafe(12)

    async def work(platform: Platform) -> int:
        async with transaction(platform.db.app) as tx:
            user = await operator_set_password(platform, tx, email=args.email, password=password)
        console.print(f"{user.email}: password set; every session of this user ended")
        if not args.password:
            console.print(f"generated password (shown once): {password}")
        return 0

    return run(settings, work)


def disabled_command(disabled: bool) -> Callable[[Settings, argparse.Namespace], int]:
    def command(settings: Settings, args: argparse.Namespace) -> int:
        from app.services.sessions.accounts import set_disabled

        async def work(platform: Platform) -> int:
            async with transaction(platform.db.app) as tx:
                user = await set_disabled(platform, tx, email=args.email, disabled=disabled)
            console.print(f"{user.email}: {'disabled (sessions ended, API tokens stopped)' if disabled else 'enabled'}")
            return 0

        return run(settings, work)

    return command
