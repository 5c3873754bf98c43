"""The built-in showback page in a real headless Chromium (Debian's ``chromium``), driven by Playwright.

Loads ``/#token=...`` against the live server on simulator demo data, checks
that both SVG charts drew one bar group per tenant of the API's answer, that
the table matches, that a period change reloads, and that the download link
returns the month's chargeback CSV, and that the idle-policy control re-asks the
API under that policy. A screenshot is kept in the test's tmp
directory. Without Chromium the test skips, except under CI=true.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.demo_data import build_demo_db
from tests.support.live_server import serving
from tests.support.system import need_binary

pytestmark = [pytest.mark.external, pytest.mark.slow]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _need_chromium() -> str:
    return need_binary("chromium", "chromium-browser",
                       hint="apt-get install chromium, or run scripts/system-deps.sh as root")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    path = build_demo_db(tmp_path_factory.mktemp("web") / "demo.duckdb", hours=6.0)
    with Store(path) as store:
        _, token = create_token(store, "admin")
        _, tenant = create_token(store, "tenant", "nlp")
    with serving(create_app(str(path))) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield {"client": client, "token": token, "tenant_token": tenant, "base": str(client.base_url)}


def test_page_renders_charts_and_downloads_the_chargeback(site: dict[str, Any], tmp_path: Path) -> None:
    executable = _need_chromium()
    from playwright.sync_api import sync_playwright

    expected = site["client"].get("/v1/showback", params={"limit": 1000}).json()
    tenants = [r["tenant"] for r in expected["rows"]]
    assert len(tenants) >= 3
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(  # --user-data-dir is this argument
            str(tmp_path / "profile"), executable_path=executable, headless=True, args=FLAGS[1:],
            viewport={"width": 1200, "height": 900}, accept_downloads=True)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{site['base']}/#token={site['token']}")
            page.wait_for_selector("body[data-ready='1']", timeout=20_000)
            assert "#token" not in page.url  # the token left the address bar
            for chart in ("#chart-usage", "#chart-cost"):
                drawn = page.eval_on_selector_all(f"{chart} rect", "rs => rs.map(r => r.dataset.tenant)")
                assert set(drawn) == {t for t, r in zip(tenants, expected["rows"]) if Decimal(r["cost"]) > 0} \
                    or set(drawn) == set(tenants), chart
                widths = page.eval_on_selector_all(f"{chart} rect", "rs => rs.map(r => +r.getAttribute('width'))")
                assert max(widths) > 100
            cells = page.eval_on_selector_all("#table tbody tr td:first-child", "tds => tds.map(t => t.textContent)")
            assert cells == tenants
            assert expected["total_cost"] in page.inner_text("#table tfoot")
            page.screenshot(path=str(tmp_path / "showback.png"), full_page=True)

            link = page.locator("#download")
            assert link.is_visible() and "2026-10" in link.inner_text()
            with page.expect_download(timeout=20_000) as info:
                link.click()
            saved = tmp_path / info.value.suggested_filename
            info.value.save_as(saved)
            rows = list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"), newline="")))
            assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal(expected["total_cost"])

            page.fill("#start", "2026-10-02")  # a shorter period reloads the charts
            page.fill("#end", "2026-10-03")
            page.click("#period-form button[type=submit]")
            page.wait_for_selector("body[data-ready='1']", timeout=20_000)
            assert "2026-10-02T00:00:00Z" in page.inner_text("#period")

            # Who pays for idle: the page control re-asks the API under that policy (the whole demo month).
            shared = site["client"].get("/v1/showback", params={"limit": 1000, "idle_policy": "platform"}).json()
            assert [(r["tenant"], r["cost"]) for r in shared["rows"]] != [
                (r["tenant"], r["cost"]) for r in expected["rows"]]  # the policy changes who pays
            page.fill("#start", "")
            page.fill("#end", "")
            page.select_option("#idle-policy", "platform")
            page.click("#period-form button[type=submit]")
            page.wait_for_selector("body[data-ready='1']", timeout=20_000)
            assert "idle policy platform" in page.inner_text("#period")
            cells = page.eval_on_selector_all("#table tbody tr", "trs => trs.map(tr => [tr.cells[0].textContent, "
                                              "tr.cells[8].textContent])")
            assert cells == [[r["tenant"], f"{r['cost']} {r['currency']}"] for r in shared["rows"]]

            team = browser.new_page()  # a tenant's token: its own row only, no finance download
            team.goto(f"{site['base']}/#token={site['tenant_token']}")
            team.wait_for_selector("body[data-ready='1']", timeout=20_000)
            assert team.eval_on_selector_all("#table tbody tr td:first-child", "t => t.map(x => x.textContent)") \
                == ["nlp"]
            assert not team.locator("#download").is_visible() and "tenant of nlp" in team.inner_text("#who")
            assert not errors, errors
        finally:
            browser.close()
    assert (tmp_path / "showback.png").stat().st_size > 10_000
