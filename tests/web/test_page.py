"""The built-in showback page in a real headless Chromium (Debian's ``chromium``), driven by Playwright.

Against the live server on simulator demo data (six hours of one October day),
it reads the page as a person would and compares with the API: the coverage
notice, each view's rows and totals, a drill-down path from tenant to a GPU's
hours with its breadcrumbs, the top-wasters and idle-now panels, the CSV of
the shown view (a tenant token's own lines only), the fleet economics and Kueue
quota panels (economics for admin and finance only), the cost-per-unit-of-work
panel against ``/v1/units`` (a tenant token's own rows; the empty state), an error that replaces the
numbers, a 420 px screen without horizontal overflow, labels and focus
order. A screenshot of each view is kept under ``test-artifacts/web/`` (or
``$GPULEDGER_TEST_ARTIFACTS/web``). Without Chromium the test skips, except
under CI=true.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from gpuledger.api.app import create_app
from gpuledger.api.tokens import create_token
from gpuledger.store import Store
from tests.support.demo_data import add_business_data, build_demo_db, demo_queues
from tests.support.live_server import serving
from tests.support.system import need_binary

pytestmark = [pytest.mark.external, pytest.mark.slow]
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parents[2]
READY = "body[data-ready='1']"


def _artifacts() -> Path:
    base = Path(os.environ.get("GPULEDGER_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    out = base / "web"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    path = add_business_data(build_demo_db(tmp_path_factory.mktemp("web") / "demo.duckdb", hours=6.0))
    with Store(path) as store:
        _, token = create_token(store, "admin")
        _, tenant = create_token(store, "tenant", "nlp")
    with serving(create_app(str(path), queues=demo_queues(path))) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        yield {"client": client, "token": token, "tenant_token": tenant, "base": str(client.base_url)}


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    executable = need_binary("chromium", "chromium-browser",
                             hint="apt-get install chromium, or run scripts/system-deps.sh as root")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(  # --user-data-dir is this argument
            str(tmp_path / "profile"), executable_path=executable, headless=True, args=FLAGS,
            viewport={"width": 1200, "height": 900}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()


def _open(context: Any, site: dict[str, Any], token: str, errors: list[str]) -> Any:
    page = context.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site['base']}/#token={token}")
    page.wait_for_selector(READY, timeout=30_000)
    return page


def _show(page: Any, **select: str) -> None:
    for field, value in select.items():
        page.select_option(f"#{field}", value)
    page.click("#controls button[type=submit]")
    page.wait_for_selector(READY, timeout=30_000)


def _first_column(page: Any) -> list[str]:
    return page.eval_on_selector_all("#table tbody tr th", "ths => ths.map(t => t.textContent)")  # type: ignore[no-any-return]


def _name(value: Any, dim: str) -> str:
    if value is not None:
        return str(value)
    return "(unallocated)" if dim in ("tenant", "namespace", "pod", "workload") else "(none)"


def _download(page: Any, selector: str, into: Path) -> list[dict[str, str]]:
    with page.expect_download(timeout=30_000) as info:
        page.click(selector)
    saved = into / info.value.suggested_filename
    info.value.save_as(saved)
    return list(csv.DictReader(io.StringIO(saved.read_text(encoding="utf-8"), newline="")))


def test_views_totals_notice_and_csv_read_as_the_api_says(site: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    api, shots, errors = site["client"], _artifacts(), []
    page = _open(browser, site, site["token"], errors)
    assert "#token" not in page.url  # the token left the address bar
    expected = api.get("/v1/showback", params={"limit": 1000}).json()

    # The coverage notice says the six hours, not the month the heading spans.
    notice = page.inner_text("#notice")
    assert expected["data"]["hours_with_data"] == 6
    assert "Data covers 6 hours of this period's 31 days" in notice, notice
    assert "2026-10-01 18:00 – 2026-10-02 00:00 UTC" in notice
    assert "2026-10-01 – 2026-10-31" in page.inner_text("#heading")

    # Totals and efficiency equal the API's.
    assert _first_column(page) == [_name(r["tenant"], "tenant") for r in expected["rows"]]
    foot = page.inner_text("#table tfoot")
    assert f"{expected['total_cost']} {expected['currency']}" in foot
    used = sum(r["used_gpu_hours"] for r in expected["rows"])
    assert f"{used:.2f}" in foot
    assert page.inner_text("[data-card='Cost']") == f"{expected['total_cost']} {expected['currency']}"
    idle_cost = sum(Decimal(r["idle_cost"]) for r in expected["rows"])
    assert Decimal(idle_cost) > 0 and f"{idle_cost:.2f}" in page.inner_text("[data-card='Idle cost']")

    # The trend: one stacked bar per hour bucket the API answers, with used and unallocated segments.
    hourly = api.get("/v1/showback", params={"group_by": "cluster", "granularity": "hour", "limit": 1000}).json()
    bars = page.eval_on_selector_all("#chart-trend g[data-time]", "gs => gs.map(g => g.dataset.time)")
    assert bars == sorted({r["time"] for r in hourly["rows"]}) and len(bars) == 6
    kinds = set(page.eval_on_selector_all("#chart-trend rect", "rs => rs.map(r => r.dataset.kind)"))
    assert {"used_gpu_hours", "allocated_idle_gpu_hours", "unallocated_gpu_hours"} <= kinds

    # Panels from the existing routes.
    wasters = api.get("/v1/efficiency/top-wasters", params={"limit": 5}).json()["rows"]
    shown_wasters = page.eval_on_selector_all("#wasters tbody th", "t => t.map(x => x.textContent)")
    assert shown_wasters == [_name(r["tenant"], "tenant") for r in wasters]
    idle = [r for r in api.get("/v1/efficiency/idle-gpus", params={"limit": 1000}).json()["rows"] if r["ongoing"]]
    assert idle, "the demo holds a notebook idle to its end"
    assert page.eval_on_selector_all("#idle-now tbody th", "t => t.map(x => x.textContent)") \
        == [r["pod"] for r in idle]
    assert page.eval_on_selector_all("#idle-now tbody td:nth-child(3)", "t => t.map(x => x.textContent)") \
        == [f"{r['cluster']}/{r['node']} #{r['gpu_index']}" + (f"/{r['mig_index']}" if r["mig_index"] >= 0 else "")
            for r in idle]  # a node name alone would not say which cluster's node
    page.screenshot(path=str(shots / "view-tenant.png"), full_page=True)

    # The CSV of the shown view: its rows and cost, through the spreadsheet-safe writer.
    lines = _download(page, "#download-view", tmp_path)
    assert [r["tenant"] for r in lines] == [r["tenant"] or "" for r in expected["rows"]]
    assert sum(Decimal(r["cost"]) for r in lines) == Decimal(expected["total_cost"])

    # Every other view: rows as the API groups them, total cost equal; a screenshot each.
    for view, dim in (("namespace", "namespace"), ("model", "model"), ("workload", "workload"), ("pod", "pod"),
                      ("cluster", "cluster"), ("label", "label:team")):
        _show(page, view=view)
        want = api.get("/v1/showback", params={"group_by": dim, "limit": 1000}).json()
        assert _first_column(page) == [_name(r[dim], dim) for r in want["rows"]], view
        assert f"{want['total_cost']} {want['currency']}" in page.inner_text("#table tfoot"), view
        page.screenshot(path=str(shots / f"view-{view}.png"), full_page=True)
    assert _first_column(page) and "team" in page.inner_text("#table thead")

    # Who pays for idle: the control re-asks the API under that policy; the page shows its answer.
    platform = api.get("/v1/showback", params={"limit": 1000, "idle_policy": "platform"}).json()
    assert [(r["tenant"], r["cost"]) for r in platform["rows"]] != [(r["tenant"], r["cost"]) for r in expected["rows"]]
    _show(page, view="tenant", **{"idle-policy": "platform"})
    assert _first_column(page) == [_name(r["tenant"], "tenant") for r in platform["rows"]]
    assert page.inner_text("[data-card='Cost']") == f"{platform['total_cost']} {platform['currency']}"
    platform_lines = {r["tenant"] or "": Decimal(r["cost"]) for r in platform["rows"]}
    assert {r["tenant"]: Decimal(r["cost"]) for r in _download(page, "#download-view", tmp_path)} == platform_lines
    assert not errors, errors


def test_drill_down_from_tenant_to_the_ledger_rows_of_one_gpu_hour(site: dict[str, Any], browser: Any,
                                                                    tmp_path: Path) -> None:
    api, shots, errors = site["client"], _artifacts(), []
    page = _open(browser, site, site["token"], errors)
    path = ["tenant nlp"]
    page.get_by_role("button", name="nlp", exact=True).click()
    page.wait_for_selector(READY, timeout=30_000)
    namespaces = api.get("/v1/showback", params={"group_by": "namespace", "tenant": "nlp", "limit": 1000}).json()
    assert _first_column(page) == [r["namespace"] for r in namespaces["rows"]]
    assert f"{namespaces['total_cost']} " in page.inner_text("#table tfoot")
    chosen: dict[str, str] = {"tenant": "nlp"}
    for dim in ("namespace", "pod", "gpu"):
        first = page.locator("#table tbody th button").first
        chosen[dim] = first.inner_text()
        path.append(f"{'GPU' if dim == 'gpu' else dim} {chosen[dim]}")
        first.click()
        page.wait_for_selector(READY, timeout=30_000)
    # The GPU's line per hour, as the API buckets it; its total is the GPU row's.
    hourly = api.get("/v1/showback", params={**chosen, "group_by": "gpu", "granularity": "hour", "limit": 1000,
                                             "start": "2026-10-01", "end": "2026-11-01"}).json()
    assert _first_column(page) == [r["time"].replace("T", " ")[:16] for r in hourly["rows"]]
    assert f"{hourly['total_cost']} USD" in page.inner_text("#table tfoot")
    assert len(page.eval_on_selector_all("#chart-trend g[data-time]", "gs => gs")) == len(hourly["rows"])
    page.screenshot(path=str(shots / "drill-gpu-hours.png"), full_page=True)
    lines = _download(page, "#download-view", tmp_path)  # the shown view: the GPU's hours
    assert [r["time"] for r in lines] == [r["time"] for r in hourly["rows"]]

    hour = hourly["rows"][0]
    page.locator("#table tbody th button").first.click()  # one GPU-hour: the ledger rows behind it
    page.wait_for_selector(READY, timeout=30_000)
    path.append(f"hour {hour['time'].replace('T', ' ')[:16]}")
    crumbs = page.eval_on_selector_all("#crumbs li", "lis => lis.map(l => l.textContent)")
    assert crumbs == ["all tenants", *path]
    assert page.get_attribute("#crumbs li:last-child span", "aria-current") == "page"
    rows = api.get(hour["drilldown"] + "&view=intervals&limit=1000").json()  # (params= would drop its query)
    assert 0 < rows["total_rows"] and f"{rows['total_rows']} ledger rows" in page.inner_text("#notice")
    assert len(_first_column(page)) == rows["total_rows"]
    assert set(_first_column(page)) <= {r["interval_start"] for r in rows["rows"]}
    assert {chosen["pod"]} == set(page.eval_on_selector_all("#table tbody tr td:nth-child(5)",
                                                            "t => t.map(x => x.textContent)"))
    page.screenshot(path=str(shots / "drill-hour-ledger-rows.png"), full_page=True)
    page.locator("#crumbs button", has_text="tenant nlp").click()  # a breadcrumb goes back up
    page.wait_for_selector(READY, timeout=30_000)
    assert _first_column(page) == [r["namespace"] for r in namespaces["rows"]]
    assert not errors, errors


def test_errors_replace_the_numbers_and_a_period_change_reloads(site: dict[str, Any], browser: Any) -> None:
    errors: list[str] = []
    page = _open(browser, site, site["token"], errors)
    page.select_option("#preset", "custom")
    page.fill("#start", "2026-10-01")
    page.fill("#end", "2026-10-01")
    _show(page)
    assert "By tenant: 2026-10-01 (UTC)" in page.inner_text("#heading")
    assert "Data covers 6 hours of this period's 24 hours" in page.inner_text("#notice")
    page.fill("#start", "2026-10-05")  # after the end: the API's bad_period, and no stale table under it
    page.click("#controls button[type=submit]")
    page.wait_for_selector("body[data-ready='error']", timeout=30_000)
    assert "error: start 2026-10-05 is not before end" in page.inner_text("#error")
    assert "hint:" in page.inner_text("#error")
    assert not page.locator("#table").is_visible() and not page.locator("#notice").is_visible()
    assert not page.locator("#units").is_visible() and not page.locator("#queues").is_visible()
    page.fill("#start", "2026-09-01")  # nothing there: a notice, not zeros presented as data
    page.fill("#end", "2026-09-30")
    _show(page)
    assert page.inner_text("#error") == "" and page.inner_text("#notice") == "No data in this period."
    assert _first_column(page) == []
    assert not errors, errors


def test_period_presets_ask_for_the_utc_days_they_name(site: dict[str, Any], browser: Any) -> None:
    errors: list[str] = []
    page = _open(browser, site, site["token"], errors)
    today = dt.datetime.now(dt.UTC).date()
    first = today.replace(day=1)
    last_month_end = first - dt.timedelta(days=1)
    expected = {"today": (today, today), "last7": (today - dt.timedelta(days=6), today),
                "last30": (today - dt.timedelta(days=29), today),
                "this-month": (first, (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)),
                "last-month": (last_month_end.replace(day=1), last_month_end)}
    for preset, (start, end) in expected.items():
        _show(page, preset=preset)
        shown = f"{start} – {end}" if start != end else f"{start}"
        assert f": {shown} (UTC)" in page.inner_text("#heading"), (preset, page.inner_text("#heading"))
        assert page.inner_text("#error") == ""
        if start > dt.date(2026, 10, 2) or end < dt.date(2026, 10, 1):  # no demo data: said, not shown as zeros
            assert page.inner_text("#notice") == "No data in this period." and _first_column(page) == []
    assert not errors, errors


def test_tenant_token_narrow_screen_and_keyboard(site: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    shots, errors = _artifacts(), []
    team = _open(browser, site, site["tenant_token"], errors)
    assert _first_column(team) == ["nlp"] and "tenant of nlp" in team.inner_text("#who")
    assert not team.locator("#download").is_visible()  # the finance file is not a tenant's
    lines = _download(team, "#download-view", tmp_path)  # its own lines, through the same CSV route
    assert [r["tenant"] for r in lines] == ["nlp"]
    want = site["client"].get("/v1/showback", params={"tenant": "nlp"}).json()
    assert lines[0]["cost"] == want["rows"][0]["cost"]
    team.close()

    narrow = _open(browser, site, site["token"], errors)
    narrow.set_viewport_size({"width": 420, "height": 900})
    narrow.wait_for_timeout(200)
    width = narrow.evaluate("document.documentElement.scrollWidth")
    assert width <= 420, f"the page overflows a 420 px screen: {width} px"
    names = narrow.eval_on_selector_all("#table tbody th", "ths => ths.map(t => t.getBoundingClientRect().width)")
    assert names and min(names) >= 100, f"row names squeezed on a narrow screen: {names}"  # readable, not a letter a line
    narrow.screenshot(path=str(shots / "narrow-420.png"), full_page=True)

    # Every control has a label; tables have column headers; Tab walks the controls in reading order.
    unlabelled = narrow.eval_on_selector_all(
        "#controls input, #controls select", "xs => xs.filter(x => !x.labels || !x.labels.length).map(x => x.id)")
    assert unlabelled == []
    assert narrow.eval_on_selector_all("#table thead th", "ths => ths.every(t => t.scope === 'col')")
    narrow.focus("#preset")
    order = ["preset"]
    for _ in range(4):
        narrow.keyboard.press("Tab")
        order.append(narrow.evaluate("document.activeElement.id || document.activeElement.textContent"))
    assert order == ["preset", "view", "idle-policy", "Show", "download-view"], order
    assert not errors, errors


def test_economics_and_quota_panels_read_as_the_api_says(site: dict[str, Any], browser: Any) -> None:
    api, shots, errors = site["client"], _artifacts(), []
    page = _open(browser, site, site["token"], errors)
    period = api.get("/v1/showback", params={"limit": 1}).json()["period"]  # the page's "latest month"
    econ = api.get("/v1/economics", params=period).json()
    assert econ["pools"]
    cells = page.eval_on_selector_all("#economics tbody tr", "trs => trs.map(t => [...t.children].map(c => c.textContent))")
    assert [c[:3] for c in cells] == [[p["pool"], p["model"], p["cluster"]] for p in econ["pools"]]
    for shown, pool in zip(cells, econ["pools"], strict=True):
        assert shown[3] == f"{100 * float(pool['utilization']):.0f} %"
        assert shown[6] == f"{pool['cost_per_used_gpu_hour']} {econ['currency']}"
    queues = api.get("/v1/queues", params=period).json()
    assert queues["month"] == "2026-10" and queues["queues"]
    rows = page.eval_on_selector_all("#queues tbody tr", "trs => trs.map(t => [...t.children].map(c => c.textContent))")
    assert [r[:2] for r in rows] == [[q["cluster_queue"], q["tenant"]] for q in queues["queues"]]
    for shown, q in zip(rows, queues["queues"], strict=True):
        assert shown[2] == f"{q['quota_gpu_hours']:.2f}" and shown[3] == f"{q['reserved_gpu_hours']:.2f}"
        assert shown[7] == f"{q['wait_p50_s']:.2f}" and shown[8] == f"{q['wait_p95_s']:.2f}"
    assert "2026-10" in page.inner_text("#queues-note")
    local = page.eval_on_selector_all("#local-queues tbody tr",
                                      "trs => trs.map(t => [...t.children].map(c => c.textContent))")
    assert queues["local_queues"] and [r[:3] for r in local] == [
        [q["local_queue"], q["cluster_queue"], q["tenant"]] for q in queues["local_queues"]]
    for shown, q in zip(local, queues["local_queues"], strict=True):
        assert shown[4] == f"{q['quota_share_gpu_hours']:.2f}" and shown[6] == f"{100 * q['share_of_quota']:.0f} %"
    page.locator("#economics-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "business-panels.png"), full_page=True)

    team = _open(browser, site, site["tenant_token"], errors)  # a tenant: its own queue, no fleet economics
    assert not team.locator("#economics-panel").is_visible()
    assert team.eval_on_selector_all("#queues tbody th", "t => t.map(x => x.textContent)") == ["cq-nlp"]
    own = team.eval_on_selector_all("#local-queues tbody th", "t => t.map(x => x.textContent)")
    assert own == [q["local_queue"] for q in queues["local_queues"] if q["tenant"] == "nlp"] and own
    assert not errors, errors


def _key(r: dict[str, Any]) -> list[str]:
    return [r["unit"], str(r["per"]), _name(r["tenant"], "tenant"), _name(r["model"], "model"), r["pod"]]


def test_units_panel_reads_as_the_api_says(site: dict[str, Any], browser: Any) -> None:
    api, shots, errors = site["client"], _artifacts(), []
    page = _open(browser, site, site["token"], errors)
    period = api.get("/v1/showback", params={"limit": 1}).json()["period"]  # the page's "latest month"
    units = api.get("/v1/units", params=period).json()
    assert units["month"] == "2026-10" and units["rows"]  # the demo's vLLM token series, imported
    cur = units["currency"]

    def cells(p: Any) -> list[list[str]]:
        return p.eval_on_selector_all(  # type: ignore[no-any-return]
            "#units tbody tr", "trs => trs.map(t => [...t.children].map(c => c.textContent))")

    shown = cells(page)
    assert [c[:5] for c in shown] == [_key(r) for r in units["rows"]]
    for row, r in zip(shown, units["rows"], strict=True):
        assert float(row[5]) == r["count"]
        assert row[6] == f"{r['cost_per_busy']} {cur}" and row[7] == f"{r['cost_per_held']} {cur}"
        assert row[8:11] == [r[k] if r[k] is not None else "–" for k in ("used_gpu_hours_per", "held_gpu_hours_per",
                                                                             "kwh_per")]
        assert row[11] == f"{float(r['used_gpu_hours']):.2f}" and row[12] == f"{float(r['held_gpu_hours']):.2f}"
        # Including the idle it held never costs less than busy time alone.
        assert Decimal(r["cost_per_held"]) >= Decimal(r["cost_per_busy"])
    assert page.eval_on_selector_all("#units thead th", "ths => ths.every(t => t.scope === 'col')")
    assert "2026-10" in page.inner_text("#units-note")
    page.locator("#units-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "units-panel.png"), full_page=True)

    # A month without work units: the empty state says how to import them, not a table of zeros.
    page.select_option("#preset", "custom")
    page.fill("#start", "2026-09-01")
    page.fill("#end", "2026-09-30")
    _show(page)
    assert api.get("/v1/units", params={"month": "2026-09"}).json()["rows"] == []
    assert cells(page) == [["no work units this month (import them hourly with `gpuledger units import`; "
                            "docs/economics.md#work-units)"]]

    team = _open(browser, site, site["tenant_token"], errors)  # a tenant: its own rows only
    own = [r for r in units["rows"] if r["tenant"] == "nlp"]
    assert own and len(own) < len(units["rows"])
    assert [c[:5] for c in cells(team)] == [_key(r) for r in own]
    assert not errors, errors
