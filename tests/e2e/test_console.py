"""The console end to end: `turnout serve` with two workers, Redis and a pool of two
simulated replicas, used through a real headless Chromium (Debian's `chromium`, driven by
Playwright) and over plain HTTP.

In the browser: log in, watch live numbers move under traffic, fail a replica and watch
its circuit open (live view and incidents), see decisions and spend, create a key that
then works and revoke it so that it gets 401, rotate one; a read-only user gets no
controls. Over HTTP: no console route answers without a session; cross-site changes and
changes without the CSRF token are refused; a read-only user cannot change anything but
downloads the Spend page's CSV exports (their exact header rows); frames add up both
workers. Screenshots of every page land in the test's tmp dir (and in
$TURNOUT_CONSOLE_SCREENSHOTS when set, made if missing: scripts/test.sh sets it to
.cache/test-artifacts/console; how docs/console-live.png was made).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from gateway.console.http import PUBLIC_ASSETS, ROUTES, STATIC
from gateway.console.sessions import COOKIE
from selfhost.sim import Faults, Simulator, ThreadedSim
from tests.support.accounts import auth, eventually, new_key, suffix
from tests.support.console import ConsoleClient, Traffic, deployment_rows
from tests.support.procs import Gateway, RedisServer

CHROMIUM = "/usr/bin/chromium"  # Debian's package (scripts/bootstrap.sh installs it)
S = suffix()
TEAM = f"console-{S}"
TEAM_KEY, ADMIN, VIEWER, OPS = new_key(), new_key(), new_key(), new_key()
WAIT_MS = 20_000


@pytest.fixture(scope="module")
def sims() -> Iterator[ThreadedSim]:
    with ThreadedSim(Simulator("fast-gpu"), Simulator("fast-gpu")) as sims:
        yield sims


@pytest.fixture(scope="module")
def gateway(redis_server: RedisServer, sims: ThreadedSim,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = {
        "redis": {"url": redis_server.url},
        "auth": {"admin_key": ADMIN, "cache_ttl_s": 60},
        "pools": [{"name": "gpu", "endpoints": sims.urls, "probe_interval_s": 0.5,
                   "scrape_interval_s": 0.5}],
        # Round robin: both replicas take traffic, so a failed one trips its breaker.
        "models": {"chat": {"routing": {"policy": "round-robin"}, "deployments": [
            {"target": "gpu", "model": "m", "price": {"input": 0.5, "output": 1.5}}]}},
        "failover": {"breaker": {"consecutive_failures": 3, "cooldown_s": 60}},
        "teams": [{"name": TEAM, "limits": {"rpm": 100_000}, "budget": {"usd": 50},
                   "keys": [{"id": "app", "key": TEAM_KEY}]}],
        "console": {"sample_per_s": 20, "users": [
            {"name": "viewer", "key": VIEWER}, {"name": "ops", "key": OPS, "role": "admin"}]},
    }
    gw = Gateway(config, tmp_path_factory.mktemp("console"), workers=2)
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        # As root (CI, containers) Chromium's sandbox cannot start: run without it.
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def chat(gw: Gateway, key: str) -> int:
    r = httpx.post(f"{gw.url}/v1/chat/completions", headers=auth(key), timeout=30,
                   json={"model": "chat", "max_tokens": 4,
                         "messages": [{"role": "user", "content": "abcd"}]})
    return r.status_code


def replica(sims: ThreadedSim, i: int) -> str:
    return "gpu/" + sims.urls[i].split("://", 1)[1]


# -- over HTTP ------------------------------------------------------------------------------

def test_no_console_route_answers_without_a_session(gateway: Gateway) -> None:
    forged = httpx.Client(base_url=gateway.url, cookies={COOKIE: "A" * 43})  # made up
    with httpx.Client(base_url=gateway.url) as http, forged:
        for route in ROUTES:
            if route.public:  # the login page and the login itself
                continue
            for method in ("GET", "POST", "PUT", "DELETE") if route.method == "*" else (
                    route.method,):
                for client in (http, forged):
                    r = client.request(method, route.sample)
                    if r.status_code == 303:  # a page: to the login page
                        assert r.headers["location"] == "/console/login", route.sample
                    else:
                        assert r.status_code == 401, (method, route.sample, r.status_code)
        assert http.post("/console/api/login", json={}).status_code == 401
        for path in STATIC.rglob("*"):
            name = str(path.relative_to(STATIC))
            r = http.get(f"/console/static/{name}")
            assert r.status_code == (200 if name in PUBLIC_ASSETS else 401), name
        assert http.get("/console/login").status_code == 200


def test_login_sets_a_strict_http_only_cookie_and_logout_ends_it(gateway: Gateway) -> None:
    with httpx.Client(base_url=gateway.url) as http:
        assert http.post("/console/api/login", json={"key": new_key()}).status_code == 401
        assert http.post("/console/api/login", json={"key": TEAM_KEY}).status_code == 401
    client = ConsoleClient(gateway.url, ADMIN)
    for attr in ("HttpOnly", "SameSite=Strict", "Path=/console"):
        assert attr in client.login.headers["set-cookie"]
    session = client.request("GET", "/console/api/session").json()
    assert session["user"] == "admin" and session["role"] == "admin"
    assert ADMIN not in orjson.dumps(session).decode()
    sid = client.http.cookies[COOKIE]
    assert client.request("POST", "/console/api/logout").status_code == 200
    replay = httpx.get(f"{gateway.url}/console/api/session", cookies={COOKIE: sid})
    assert replay.status_code == 401  # ended in the store, not only in this browser


def test_cross_site_changes_and_changes_without_the_token_are_refused(gateway: Gateway
                                                                      ) -> None:
    client = ConsoleClient(gateway.url, OPS)
    path = f"/console/api/admin/teams/{TEAM}/keys"
    evil = {"origin": "https://evil.example"}
    attempts: list[dict[str, Any]] = [
        {"headers": evil, "token": False},  # a forged form: no token, another origin
        {"headers": evil, "token": True},
        {"headers": {"sec-fetch-site": "cross-site"}, "token": True},
        {"headers": {"origin": gateway.url}, "token": False},
    ]
    for i, attempt in enumerate(attempts):
        send = client.request if attempt["token"] else client.http.request
        r = send("POST", path, json={"id": f"forged-{i}"}, headers=attempt["headers"])
        assert r.status_code == 403, attempt
    ids = [k["id"] for k in client.request("GET", path).json()["data"]]
    assert not [i for i in ids if i.startswith("forged")]
    with httpx.Client(base_url=gateway.url) as http:
        assert http.post("/console/api/login", json={"key": OPS},
                         headers=evil).status_code == 403
    made = client.request("POST", path, json={"id": f"ok-{S}"}, headers={"origin": gateway.url})
    assert made.status_code == 201 and made.json()["key"].startswith("tk-")
    assert made.headers["cache-control"] == "no-store"
    assert client.request("DELETE", f"{path}/ok-{S}").status_code == 200


def test_a_read_only_user_cannot_change_anything(gateway: Gateway) -> None:
    viewer = ConsoleClient(gateway.url, VIEWER)
    base = f"/console/api/admin/teams/{TEAM}"
    assert viewer.request("GET", base + "/keys").status_code == 200
    assert viewer.request("GET", "/console/api/spend").status_code == 200
    for method, path, body in (
            ("POST", base + "/keys", {"id": "nope"}), ("PUT", base, {"priority": 9}),
            ("DELETE", base + "/keys/app", None),
            ("POST", f"/console/api/teams/{TEAM}/keys/app/rotate", None)):
        r = viewer.request(method, path, json=body)
        assert r.status_code == 403 and "read-only" in r.json()["error"], (method, path)
    assert chat(gateway, TEAM_KEY) == 200  # the key it tried to revoke still works


USAGE_CSV = "/console/api/admin/usage?format=csv&by=team,model,day"
EVENTS_CSV = "/console/api/admin/events?format=csv&limit=100000"
CSV_HEADERS = {
    USAGE_CSV: "team,model,day,requests,prompt_tokens,completion_tokens,cached_tokens,"
               "cache_hits,errors,estimated,saved_tokens,cache_write_tokens,reasoning_tokens,"
               "cost_usd,saved_cost_usd",
    EVENTS_CSV: "id,request_id,time,team,key_id,model,operation,deployment,stream,"
                "prompt_tokens,completion_tokens,cached_tokens,cache_write_tokens,"
                "reasoning_tokens,total_tokens,cost_usd,latency_ms,ttft_ms,status,cache_hit,"
                "retries,estimated,saved_tokens,saved_cost_usd",
}


def test_the_spend_pages_csv_exports_download_for_a_viewer(gateway: Gateway) -> None:
    links = re.findall(r'href: "(/console/api/[^"]*format=csv[^"]*)"',
                       (STATIC / "spend.js").read_text())
    assert links == [USAGE_CSV, EVENTS_CSV]  # what the Spend page links to
    assert chat(gateway, TEAM_KEY) == 200  # at least one settled request of the team
    viewer = ConsoleClient(gateway.url, VIEWER)

    def download(link: str) -> list[dict[str, str]] | None:
        r = viewer.http.get(link)  # as a link is followed: the cookie, no CSRF token
        assert r.status_code == 200, (link, r.status_code)
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        if not r.text:  # nothing settled yet: no rows, no header
            return None
        assert r.text.split("\n", 1)[0] == CSV_HEADERS[link]
        rows = [row for row in csv.DictReader(io.StringIO(r.text)) if row["team"] == TEAM]
        return rows or None

    usage = eventually(lambda: download(USAGE_CSV))  # settled in the background
    assert {r["model"] for r in usage} == {"chat"} and sum(int(r["requests"]) for r in usage) >= 1
    events = eventually(lambda: download(EVENTS_CSV))
    assert ("chat", "app", "200") in {(r["model"], r["key_id"], r["status"]) for r in events}
    assert TEAM_KEY not in orjson.dumps(events).decode()


def test_frames_add_up_both_workers(gateway: Gateway) -> None:
    client = ConsoleClient(gateway.url, OPS)
    first = client.frame_where(lambda f: f.get("processes") == 2)
    before = first["models"][0]["requests"] if first["models"] else 0
    n = 30
    assert [chat(gateway, TEAM_KEY) for _ in range(n)] == [200] * n
    frame = client.frame_where(lambda f: f.get("processes") == 2 and f["models"]
                               and f["models"][0]["requests"] >= before + n)
    rows = deployment_rows(frame)
    assert set(rows) == {d["id"] for d in frame["models"][0]["deployments"]}
    assert all(r["circuit"] in ("closed", "open", "half_open") for r in rows.values())
    assert frame["teams"][TEAM]["requests"] >= 1
    text = orjson.dumps(frame).decode()
    assert TEAM_KEY not in text and ADMIN not in text and OPS not in text


# -- in a browser ---------------------------------------------------------------------------

def shoot(page: Page, folder: Path, name: str) -> None:
    page.screenshot(path=str(folder / f"console-{name}.png"), full_page=False)
    extra = os.environ.get("TURNOUT_CONSOLE_SCREENSHOTS")  # scripts/test.sh sets it
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(extra) / f"console-{name}.png"))


def count(page: Page, testid: str) -> int:
    return int(page.get_by_test_id(testid).inner_text().replace(",", "") or 0)


def log_in(browser: Browser, gateway: Gateway, key: str) -> Page:
    page = browser.new_context(viewport={"width": 1440, "height": 900}).new_page()
    page.goto(gateway.url + "/console/")
    expect(page).to_have_url(re.compile(r"/console/login$"))
    page.fill("#key", key)
    page.click("button[type=submit]")
    expect(page.get_by_test_id("processes")).to_have_text("2", timeout=WAIT_MS)
    return page


def test_console_in_a_browser(gateway: Gateway, sims: ThreadedSim, browser: Browser,
                              tmp_path: Path) -> None:
    traffic = Traffic(gateway.url, TEAM_KEY)
    try:
        page = log_in(browser, gateway, OPS)
        expect(page.get_by_test_id("who")).to_have_text("ops · admin")
        seen = count(page, "total-requests")
        page.wait_for_function(  # live numbers move while traffic runs
            "n => Number(document.querySelector('[data-testid=total-requests]')"
            ".textContent.replace(/,/g, '')) > n + 10", arg=seen, timeout=WAIT_MS)
        expect(page.get_by_test_id("model-chat-rps")).not_to_have_text("—")
        shoot(page, tmp_path, "live")

        bad = replica(sims, 0)
        sims.sims[0].faults = Faults(rate_500=1.0)  # the replica fails every request
        expect(page.get_by_test_id(f"dep-{bad}-circuit")).to_have_text("open", timeout=WAIT_MS)
        expect(page.get_by_test_id(f"dep-{replica(sims, 1)}-circuit")).to_have_text("closed")
        shoot(page, tmp_path, "live-incident")

        page.click("nav a[data-page=incidents]")
        expect(page.get_by_test_id(f"circuit-{bad}-state")).to_have_text("open")
        expect(page.get_by_test_id("transition").filter(has_text=bad).first).to_contain_text(
            "open")
        shoot(page, tmp_path, "incidents")

        page.click("nav a[data-page=decisions]")
        expect(page.get_by_test_id("decision-deployment").first).to_contain_text("gpu/")
        shoot(page, tmp_path, "decisions")

        page.click("nav a[data-page=spend]")
        expect(page.get_by_test_id(f"team-{TEAM}-spend")).to_contain_text("of $50.00")
        shoot(page, tmp_path, "spend")

        manage_keys(page, gateway, tmp_path)
        assert traffic.statuses.get(200, 0) > 10 and set(traffic.statuses) == {200}
    finally:
        traffic.stop()
        sims.sims[0].faults = Faults()


def manage_keys(page: Page, gateway: Gateway, shots: Path) -> None:
    """Change the team's limits and budget; create a key (it works), revoke it (401);
    rotate another (the old one 401, the new one 200)."""
    page.click("nav a[data-page=keys]")
    page.select_option("[data-testid=team-picker]", TEAM)
    team = page.get_by_test_id("team-form")
    team.locator("input[name=rpm]").fill("90000")
    team.locator("input[name=budget]").fill("60")
    team.locator("button[type=submit]").click()
    expect(page.get_by_role("status")).to_contain_text(f"team {TEAM}: done")
    policy = httpx.get(f"{gateway.url}/admin/teams/{TEAM}", headers=auth(ADMIN)).json()
    assert policy["limits"]["rpm"] == 90_000 and policy["budget"]["usd"] == 60
    secrets = {}
    for key_id in (f"web-{S}", f"rot-{S}"):
        form = page.get_by_test_id("new-key")
        form.locator("input[name=id]").fill(key_id)
        form.locator("button[type=submit]").click()
        secrets[key_id] = page.get_by_test_id("secret-value").inner_text()
        expect(page.get_by_test_id(f"keyrow-{key_id}")).to_be_visible()
        page.get_by_test_id("secret-done").click()
        assert chat(gateway, secrets[key_id]) == 200
    shoot(page, shots, "keys")

    revoke = page.get_by_test_id(f"revoke-web-{S}")
    revoke.click()
    expect(revoke).to_have_text("Confirm revoke")
    revoke.click()
    expect(page.get_by_test_id(f"keyrow-web-{S}")).to_have_count(0)
    assert chat(gateway, secrets[f"web-{S}"]) == 401  # revoked on every worker at once

    page.get_by_test_id(f"rotate-rot-{S}").click()
    rotated = page.get_by_test_id("secret-value").inner_text()
    assert rotated != secrets[f"rot-{S}"]
    assert chat(gateway, secrets[f"rot-{S}"]) == 401 and chat(gateway, rotated) == 200


def test_a_read_only_user_gets_no_controls(gateway: Gateway, browser: Browser,
                                           tmp_path: Path) -> None:
    page = log_in(browser, gateway, VIEWER)
    expect(page.get_by_test_id("who")).to_have_text("viewer · read-only")
    page.click("nav a[data-page=keys]")
    expect(page.get_by_test_id("read-only")).to_be_visible()
    page.select_option("[data-testid=team-picker]", TEAM)
    expect(page.get_by_test_id("new-key").locator("button[type=submit]")).to_be_disabled()
    expect(page.get_by_test_id("revoke-app")).to_be_disabled()
    shoot(page, tmp_path, "keys-read-only")
