"""The reference console (console/) in a real browser: Debian's Chromium driven by Playwright, against
the real app behind uvicorn. Sign-in, the tenant chooser, two tenants side by side with no data
crossing, a live alarm, acknowledging it, creating a subtenant, the usage export, one token refresh
for several tabs, and a subscription resumed after the server went away. Screenshots of each page go
to .artifacts/console/ (TENANTRY_ARTIFACTS elsewhere)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import uvicorn
from sqlalchemy import text

from app.http.console import console_dir
from app.main import create_app
from app.runtime.platform import Platform
from tests.conftest import PASSWORD, Api, TenantHandle, World

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
# What this machine's closed network needs (no background connections), as root (no sandbox).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
ARTIFACTS = Path(os.environ.get("TENANTRY_ARTIFACTS") or ROOT / ".artifacts") / "console"
RAISE = ("mutation($d: ID!, $t: String!) { raiseAlarm(input: {deviceId: $d, type: $t, severity: MAJOR, text: $t}) "
         "{ id } }")
MEASURE = "mutation($i: [MeasurementInput!]!) { createMeasurements(input: $i) }"

if not CHROMIUM.exists():
    pytest.skip("Chromium is not installed (make browser installs Debian's): the console's browser tests skip",
                allow_module_level=True)
if not (console_dir() / "index.html").exists():
    pytest.skip("the console is not built (make console needs Node.js and npm): its browser tests skip",
                allow_module_level=True)
async_api = pytest.importorskip("playwright.async_api")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS, headless=True)
        yield launched
        await launched.close()


async def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def _device(api: Api, tenant: TenantHandle, name: str) -> str:
    created = await api.gql("mutation($n: String!) { createDevice(input: {name: $n, type: \"sensor\"}) { id } }",
                            {"n": name}, token=tenant.token, tenant=tenant.id)
    return str(created.data["createDevice"]["id"])


async def _also_admin_of(platform: Platform, email: str, tenant: TenantHandle) -> None:
    async with platform.db.owner.begin() as conn:
        await conn.execute(text("INSERT INTO tenantry.memberships (user_id, tenant_id, role) "
                                "SELECT id, :t, 'ADMIN' FROM tenantry.users WHERE email = :e"),
                           {"t": tenant.id, "e": email})


async def _sign_in(page: Any, base: str, email: str) -> None:
    await page.goto(f"{base}/")  # `/` leads to the console
    assert page.url.endswith("/console/")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.get_by_test_id("tenant-chooser").wait_for()


async def test_two_tenants_side_by_side_live_alarms_subtenants_and_the_export(
        browser: Any, server: str, api: Api, world: World, platform: Platform) -> None:
    enterprise = await world.tenant(kind="ENTERPRISE")
    standard = await world.tenant()
    await _also_admin_of(platform, enterprise.admin_email, standard)
    device_e = await _device(api, enterprise, "pump-e")
    device_s = await _device(api, standard, "meter-s")
    await api.gql(RAISE, {"d": device_s, "t": "only-in-s"}, token=standard.token, tenant=standard.id)
    base = f"http://{server}"
    context = await browser.new_context(accept_downloads=True, viewport={"width": 1500, "height": 1000})
    page = await context.new_page()
    await _sign_in(page, base, enterprise.admin_email)
    chooser = page.get_by_test_id("tenant-chooser")
    for tenant in (enterprise, standard):  # both memberships, each with its role
        row = chooser.locator(f"tr[data-tenant='{tenant.id}']")
        assert "ADMIN" in await row.inner_text()
    await _shot(page, "1-chooser")

    for tenant in (enterprise, standard):
        await chooser.locator(f"tr[data-tenant='{tenant.id}']").get_by_role("button", name="Open").click()
    panel_e, panel_s = page.get_by_test_id(f"panel-{enterprise.id}"), page.get_by_test_id(f"panel-{standard.id}")
    await panel_e.locator("tr[data-device='pump-e']").wait_for()
    await panel_s.locator("tr[data-device='meter-s']").wait_for()
    await panel_s.locator("tr[data-alarm='only-in-s']").wait_for()
    # No data crosses between the two panels (their clients, caches and sockets are per tenant).
    assert await panel_e.locator("tr[data-device='meter-s']").count() == 0
    assert await panel_s.locator("tr[data-device='pump-e']").count() == 0
    assert await panel_e.locator("tr[data-alarm='only-in-s']").count() == 0
    for panel in (panel_e, panel_s):
        await panel.get_by_test_id("alarm-feed").filter(has_text="live").wait_for()

    raised_at = time.monotonic()
    await api.gql(RAISE, {"d": device_e, "t": "live-in-e"}, token=enterprise.token, tenant=enterprise.id)
    await panel_e.locator("tr[data-alarm='live-in-e']").wait_for(timeout=10_000)
    print(f"a raised alarm reached the browser {1000 * (time.monotonic() - raised_at):.0f} ms after its mutation")
    await page.wait_for_timeout(300)  # a wrongly routed event would have arrived by now too
    assert await panel_s.locator("tr[data-alarm='live-in-e']").count() == 0
    await _shot(page, "2-two-tenants")

    alarm = panel_e.locator("tr[data-alarm='live-in-e']")
    await alarm.get_by_role("button", name="Acknowledge").click()
    await alarm.get_by_test_id("alarm-status").filter(has_text="ACKNOWLEDGED").wait_for()
    stored = await api.gql("{ alarms(filter: {type: \"live-in-e\"}) { edges { node { status } } } }",
                           token=enterprise.token, tenant=enterprise.id)
    assert stored.data["alarms"]["edges"][0]["node"]["status"] == "ACKNOWLEDGED"

    form = panel_e.get_by_role("form", name="create subtenant")
    domain = f"child-{enterprise.domain}"[:60]
    await form.get_by_placeholder("domain").fill(domain)
    await form.get_by_placeholder("company").fill("Child Co")
    await form.get_by_placeholder("first admin's email").fill(f"first@{domain}.test")
    await form.get_by_placeholder("password (else invited)").fill(PASSWORD)
    await form.get_by_role("button", name="Create subtenant").click()
    await panel_e.locator(f"tr[data-subtenant='{domain}']").wait_for()
    child = await api.gql("{ tenants(first: 50) { edges { node { domain company } } } }",
                          token=enterprise.token, tenant=enterprise.id)
    assert {"domain": domain, "company": "Child Co"} in [e["node"] for e in child.data["tenants"]["edges"]]
    assert await api.token(f"first@{domain}.test", PASSWORD) is not None  # its first admin can sign in
    assert await panel_s.get_by_test_id("subtenants").count() == 0  # a STANDARD tenant has none to manage
    await _shot(page, "3-subtenant-created")

    # The latest measurements over a subscription, drawn as a chart.
    earlier = [{"deviceId": device_e, "time": f"2026-01-01T00:0{i}:00Z", "type": "c8y_Temperature", "series": "T",
                "value": v, "unit": "C"} for i, v in enumerate((20.5, 21.0))]
    stored = await api.gql(MEASURE, {"i": earlier}, token=enterprise.token, tenant=enterprise.id)
    assert stored.data["createMeasurements"] == 2, stored.body
    await panel_e.locator("tr[data-device='pump-e']").get_by_role("button", name="pump-e").click()
    await panel_e.get_by_test_id("latest").wait_for()
    await api.gql(MEASURE, {"i": [{**earlier[0], "time": "2026-06-01T00:00:00Z", "value": 23.25}]},
                  token=enterprise.token, tenant=enterprise.id)
    await panel_e.get_by_test_id("latest").filter(has_text="23.25").wait_for()
    assert await panel_e.locator("svg polyline").count() == 1

    invite = panel_e.get_by_role("form", name="invite")
    await invite.get_by_placeholder("email").fill(f"reader@{domain}.test")
    await invite.get_by_role("button", name="Invite").click()
    await panel_e.get_by_test_id("invitations").get_by_text(f"reader@{domain}.test").wait_for()
    tokens = panel_e.get_by_role("form", name="create API token")
    await tokens.get_by_placeholder("name").fill("automation")
    await tokens.get_by_role("button", name="Create token").click()
    secret = await panel_e.get_by_test_id("new-token").inner_text()
    readable = await api.gql("{ tenant { id } }", token=secret.strip(), tenant=enterprise.id)
    assert readable.data["tenant"]["id"] == enterprise.id  # the token shown once works
    assert (await api.gql("{ tenant { id } }", token=secret.strip(), tenant=standard.id)).code is not None
    await _shot(page, "4-data-and-access")

    async with page.expect_download() as download_info:
        await panel_e.get_by_test_id("usage").get_by_role("button", name="Export CSV").click()
    download = await download_info.value
    saved = ARTIFACTS / download.suggested_filename
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await download.save_as(str(saved))
    lines = saved.read_text().splitlines()
    assert "tenantDomain" in lines[0] or "domain" in lines[0].lower(), lines[:2]
    assert download.suggested_filename.startswith(f"usage-{enterprise.id}-")

    # The same tenants in two browser tabs of one session: each tab shows only its own tenant.
    tabs = {tenant.id: await context.new_page() for tenant in (enterprise, standard)}
    for tenant_id, tab in tabs.items():
        await tab.goto(f"{base}/console/#/t/{tenant_id}")
    await tabs[enterprise.id].locator("tr[data-device='pump-e']").wait_for()
    await tabs[standard.id].locator("tr[data-device='meter-s']").wait_for()
    assert await tabs[enterprise.id].locator("tr[data-device='meter-s']").count() == 0
    assert await tabs[standard.id].locator("tr[data-device='pump-e']").count() == 0
    await context.close()


async def test_many_tabs_refresh_the_session_once(browser: Any, server: str, world: World) -> None:
    tenant = await world.tenant()
    base = f"http://{server}"
    context = await browser.new_context()
    first = await context.new_page()
    await _sign_in(first, base, tenant.admin_email)
    # Age the stored access token, then open three tabs at once: each needs a refresh.
    await first.evaluate("""() => {
        const s = JSON.parse(localStorage.getItem('tenantry.session'));
        s.expiresAt = Date.now() - 1000;
        localStorage.setItem('tenantry.session', JSON.stringify(s));
    }""")
    refreshes: list[str] = []
    context.on("request", lambda r: refreshes.append(r.url) if "refreshToken(" in (r.post_data or "") else None)
    tabs = [await context.new_page() for _ in range(3)]
    await asyncio.gather(*(tab.goto(f"{base}/console/#/t/{tenant.id}") for tab in tabs))
    for tab in tabs:
        await tab.get_by_test_id(f"panel-{tenant.id}").get_by_test_id("devices").wait_for(state="attached")
    assert len(refreshes) == 1, refreshes
    await _shot(tabs[0], "5-refreshed-once")
    await context.close()


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _serving(platform: Platform, port: int) -> tuple[uvicorn.Server, asyncio.Task[None]]:
    config = uvicorn.Config(create_app(platform=platform), host="127.0.0.1", port=port, lifespan="off",
                            log_level="warning", ws="websockets-sansio")
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve())
    for _ in range(500):
        if running.started:
            break
        await asyncio.sleep(0.02)
    return running, task


async def test_live_alarms_resume_after_the_server_goes_away_without_losing_one(
        browser: Any, api: Api, world: World, platform: Platform) -> None:
    tenant = await world.tenant()
    device = await _device(api, tenant, "valve")
    port = _port()
    running, task = await _serving(platform, port)
    context = await browser.new_context()
    page = await context.new_page()
    await _sign_in(page, f"http://127.0.0.1:{port}", tenant.admin_email)
    await page.goto(f"http://127.0.0.1:{port}/console/#/t/{tenant.id}")
    panel = page.get_by_test_id(f"panel-{tenant.id}")
    await panel.get_by_test_id("alarm-feed").filter(has_text="live").wait_for()
    await api.gql(RAISE, {"d": device, "t": "before-drop"}, token=tenant.token, tenant=tenant.id)
    await panel.locator("tr[data-alarm='before-drop']").wait_for()

    running.should_exit = True  # the server goes away: the console's socket closes
    await task
    await panel.get_by_test_id("alarm-feed").filter(has_text="reconnecting").wait_for()
    await api.gql(RAISE, {"d": device, "t": "while-away"}, token=tenant.token, tenant=tenant.id)
    running, task = await _serving(platform, port)
    try:
        # Resumed after its last position: the alarm raised meanwhile arrives, once.
        await panel.locator("tr[data-alarm='while-away']").wait_for(timeout=15_000)
        await panel.get_by_text("resumed").wait_for()
        assert await panel.locator("tr[data-alarm='before-drop']").count() == 1
        await _shot(page, "6-resumed")
    finally:
        await context.close()
        running.should_exit = True
        await task


async def test_graphiql_runs_a_subscription_over_the_websocket(browser: Any, server: str, api: Api,
                                                              world: World) -> None:
    tenant = await world.tenant()
    device = await _device(api, tenant, "boiler")
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"http://{server}/graphiql/")  # the origin, so GraphiQL's stored headers can be set
    headers = {"Authorization": f"Bearer {tenant.token}", "X-Tenant-ID": tenant.id}
    await page.evaluate("h => localStorage.setItem('graphiql:headers', h)", json.dumps(headers))
    query = "subscription { alarms { kind alarm { type } } }"
    await page.goto(f"http://{server}/graphiql/?query={quote(query)}")
    await page.get_by_label("Execute query (Ctrl-Enter)").click()
    await asyncio.sleep(1.0)  # the subscription is set up over the socket
    for attempt in range(20):  # raised until one arrives (the subscribe may still be on its way)
        await api.gql(RAISE, {"d": device, "t": f"seen-in-graphiql-{attempt}"}, token=tenant.token, tenant=tenant.id)
        if await page.get_by_text("seen-in-graphiql-").count():
            break
        await asyncio.sleep(0.5)
    await page.get_by_text("seen-in-graphiql-").first.wait_for()
    await _shot(page, "7-graphiql-subscription")
    await context.close()
