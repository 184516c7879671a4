"""The storefront page (api/static/) driven in headless Chromium against the real API on a real port.

Real Redis (the launcher's, via ``redis_url``), the real Starlette app under uvicorn on a free port, and
Debian's ``chromium`` driven by Playwright through ``executable_path`` (Playwright's own browser download
is never used: the network is closed). Each step is checked twice: on the page, as a shopper sees it, and
in Redis's counters, which are the truth.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from flashsale.engine import Engine, OrderStatus, ReservationStatus, SaleSettings
from flashsale.engine.models import WaitingRoom
from playwright.sync_api import BrowserContext, Locator, Page, Playwright, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
README_SCREENSHOT = REPO / "docs" / "storefront.png"
HOUR_MS = 3_600_000


# -- servers ----------------------------------------------------------------------------------------------
class ApiServer(Protocol):
    """What this file uses of tests/api/conftest.py's running server."""

    url: str

    def token(self, user: str, *, admin: bool = False, ttl_s: int = 3600) -> str: ...


@pytest.fixture
def storefront(start_server: Callable[..., ApiServer]) -> ApiServer:
    """The API app, which serves the page at /, under uvicorn on a free port (tests/api/conftest.py)."""
    return start_server()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    if not Path(CHROMIUM).is_file():
        # Not a skip: the page is part of the product. ./dev test installs the package when run as root.
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        yield p


@pytest.fixture
def browser(playwright: Playwright) -> Iterator[BrowserContext]:
    """Debian's chromium with a new, empty profile per test (nothing carries over between tests)."""
    with tempfile.TemporaryDirectory(prefix="storefront-profile-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
            locale="en-US",
            timezone_id="UTC",
            reduced_motion="reduce",  # no transitions: a screenshot shows the final state, not a frame of one
        )
        # Generous waits: the machine running the suite may be busy with other work.
        context.set_default_timeout(15_000)
        expect.set_options(timeout=10_000)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def screenshots() -> Iterator[Path]:
    """A temporary folder for the screenshots; FLASHSALE_STOREFRONT_SHOTS=<dir> keeps them for a look."""
    kept = os.environ.get("FLASHSALE_STOREFRONT_SHOTS")
    if kept:
        Path(kept).mkdir(parents=True, exist_ok=True)
        yield Path(kept)
        return
    with tempfile.TemporaryDirectory(prefix="storefront-shots-") as folder:
        yield Path(folder)


class PageErrors(list[str]):
    """Uncaught script errors of a page; a test ends by asserting there were none."""


def open_storefront(browser: BrowserContext, storefront: ApiServer) -> tuple[Page, PageErrors]:
    page = browser.new_page()
    errors = PageErrors()
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(storefront.url + "/")
    return page, errors


def sign_in(page: Page, storefront: ApiServer, user: str) -> None:
    """Signs in through the page's token field with a token minted like ``flashsale token USER`` does."""
    page.get_by_text("I have a token").click()
    page.get_by_label("Bearer token").fill(storefront.token(user))
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#account-name")).to_have_text(user)


def card(page: Page, sku: str) -> Locator:
    return page.locator(f'.product[data-sku="{sku}"]')


def counters(engine: Engine, sku: str) -> tuple[int, int, int, int]:
    sale = engine.get_sale(sku)
    return sale.available, sale.reserved, sale.sold, sale.total


def redis_now_ms(engine: Engine) -> int:
    seconds, micros = engine.redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


# -- tests ------------------------------------------------------------------------------------------------
def test_a_shopper_reserves_sees_the_hold_timer_pays_and_gets_a_confirmation(
    storefront: ApiServer, engine: Engine, browser: BrowserContext, screenshots: Path
) -> None:
    now = redis_now_ms(engine)
    engine.load_sale(SaleSettings(
        sku="SKU-PHONE", name="Aurora Phone 12", price_cents=89_900, flash_price_cents=49_900, total=5,
        per_user_limit=1, starts_at=now - 60_000, ends_at=now + 2 * HOUR_MS, reservation_ttl_ms=300_000,
    ))  # fmt: skip
    engine.load_sale(SaleSettings(
        sku="SKU-BUDS", name="Quiet Buds Pro", price_cents=19_900, flash_price_cents=8_900, total=2,
        per_user_limit=1, starts_at=now - 60_000, reservation_ttl_ms=300_000,
    ))  # fmt: skip
    engine.load_sale(SaleSettings(
        sku="SKU-WATCH", name="Pulse Watch", price_cents=34_900, flash_price_cents=17_900, total=30,
        per_user_limit=2, starts_at=now + HOUR_MS, reservation_ttl_ms=300_000,
    ))  # fmt: skip
    # Other shoppers bought every pair of buds before alice arrives.
    for other in ("bob", "carol"):
        taken = engine.reserve("SKU-BUDS", other)
        engine.confirm(engine.begin_checkout(taken.id, other, "CREDIT_CARD").id, other, "tx-" + other)
    assert counters(engine, "SKU-BUDS") == (0, 0, 2, 2)

    page, errors = open_storefront(browser, storefront)

    # The catalog with live stock, the sold-out item and the countdown to the next opening.
    phone, buds, watch = card(page, "SKU-PHONE"), card(page, "SKU-BUDS"), card(page, "SKU-WATCH")
    expect(phone.locator(".product-name")).to_have_text("Aurora Phone 12")
    expect(phone.locator(".price-flash")).to_have_text("$499.00")
    expect(phone.locator(".price-regular")).to_have_text("$899.00")
    expect(phone.locator(".stock-text")).to_have_text("5 of 5 left")
    expect(buds.locator(".product-badge")).to_have_text("Sold out")
    expect(buds.get_by_role("button", name=re.compile("^Sold out"))).to_be_disabled()
    expect(watch.locator(".product-badge")).to_have_text(re.compile(r"^Starts in (59:\d\d|1:00:00)$"))
    expect(watch.get_by_role("button", name=re.compile("^Not open yet"))).to_be_disabled()
    expect(page.locator("#sale-clock")).to_contain_text("The sale is live: 5 units left")

    # Reserving needs a shopper: the page says so instead of sending an anonymous request.
    phone.get_by_role("button", name=re.compile("^Sign in to reserve")).click()
    expect(page.get_by_role("status")).to_have_text(re.compile("Please sign in first"))
    sign_in(page, storefront, "alice")

    # Reserve -> a hold with a timer counting down from the sale's 5 minutes; Redis holds the unit.
    phone.get_by_role("button", name="Reserve: Aurora Phone 12").click()
    hold = page.locator(".hold")
    expect(hold.locator(".hold-title")).to_have_text("1 × Aurora Phone 12")
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Reserved 1 × Aurora Phone 12\."))
    expect(hold.locator(".hold-timer")).to_have_text(re.compile(r"^0[45]:\d\d$"))
    first_reading = hold.locator(".hold-timer").inner_text()
    expect(hold.locator(".hold-timer")).not_to_have_text(first_reading, timeout=3000)  # it counts down
    reservation_id = hold.get_attribute("data-reservation")
    assert reservation_id is not None
    assert counters(engine, "SKU-PHONE") == (4, 1, 0, 5)
    assert engine.get_reservation(reservation_id).status == ReservationStatus.RESERVED
    expect(phone.locator(".stock-text")).to_have_text("4 of 5 left · 1 on hold")  # the next poll shows it
    expect(phone.get_by_role("button", name=re.compile("^Held for you"))).to_be_disabled()

    page.screenshot(path=screenshots / "1-hold.png", full_page=True)
    if not README_SCREENSHOT.exists() or os.environ.get("FLASHSALE_UPDATE_SCREENSHOT") == "1":
        # Only when asked (or missing): an ordinary test run must not leave a changed file in the tree.
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(screenshots / "1-hold.png", README_SCREENSHOT)

    # A declined payment keeps the hold: the unit stays reserved, the shopper can try again.
    hold.get_by_label("Test card (always declined)").check()
    hold.get_by_role("button", name="Pay and confirm").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("^Payment declined for Aurora Phone 12"))
    expect(hold).to_be_visible()
    assert counters(engine, "SKU-PHONE") == (4, 1, 0, 5)
    declined = engine.get_reservation(reservation_id)
    assert declined.status == ReservationStatus.RESERVED
    assert declined.order_id is None or engine.get_order(declined.order_id).status == OrderStatus.FAILED
    page.screenshot(path=screenshots / "2-declined.png", full_page=True)

    # Pay with a card -> the order confirmation; Redis has sold the unit.
    hold.get_by_label("Credit card").check()
    hold.get_by_role("button", name="Pay and confirm").click()
    confirmation = page.locator(".order")
    expect(confirmation.locator(".order-title")).to_have_text("Order confirmed")
    expect(confirmation.locator(".order-item")).to_have_text("1 × Aurora Phone 12")
    expect(confirmation.locator(".order-total")).to_have_text("$499.00")
    expect(confirmation.locator(".order-status")).to_have_text("CONFIRMED")
    expect(page.locator(".hold")).to_have_count(0)
    order_id = confirmation.locator(".order-id").inner_text()
    order = engine.get_order(order_id)
    assert (order.status, order.user, order.reservation_id, order.total_cents) == (
        OrderStatus.CONFIRMED, "alice", reservation_id, 49_900,
    )  # fmt: skip
    assert engine.get_reservation(reservation_id).status == ReservationStatus.CONFIRMED
    assert counters(engine, "SKU-PHONE") == (4, 0, 1, 5)
    expect(phone.locator(".stock-text")).to_have_text("4 of 5 left")
    page.screenshot(path=screenshots / "3-confirmed.png", full_page=True)

    # The limit is 1 per shopper: a second reserve is refused by the engine, and nothing changes.
    phone.get_by_role("button", name="Reserve: Aurora Phone 12").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("^Limit reached: you have already bought"))
    assert counters(engine, "SKU-PHONE") == (4, 0, 1, 5)
    assert engine.user_counts("SKU-PHONE", "alice").purchased == 1

    # Cancelling the order (after the browser's "are you sure?") returns the unit and frees the limit.
    page.once("dialog", lambda dialog: dialog.accept())
    confirmation.get_by_role("button", name="Cancel order").click()
    expect(page.get_by_role("status")).to_have_text(
        f"Order {order_id} is cancelled; the units are back on sale."
    )
    expect(confirmation.locator(".order-status")).to_have_text("CANCELLED")
    assert engine.get_order(order_id).status == OrderStatus.CANCELLED
    assert counters(engine, "SKU-PHONE") == (5, 0, 0, 5)
    assert engine.user_counts("SKU-PHONE", "alice").purchased == 0
    expect(phone.locator(".stock-text")).to_have_text("5 of 5 left")

    for shot in ("1-hold.png", "2-declined.png", "3-confirmed.png"):
        assert (screenshots / shot).stat().st_size > 10_000
    assert errors == []


def test_a_unit_sold_while_the_page_was_stale_and_a_hold_that_runs_out(
    storefront: ApiServer, engine: Engine, browser: BrowserContext, screenshots: Path
) -> None:
    now = redis_now_ms(engine)
    engine.load_sale(SaleSettings(
        sku="SKU-LAST", name="Last Lamp", price_cents=5_000, flash_price_cents=2_500, total=1,
        per_user_limit=1, starts_at=now - 60_000, reservation_ttl_ms=3_000,
    ))  # fmt: skip
    page, errors = open_storefront(browser, storefront)
    sign_in(page, storefront, "dave")
    lamp = card(page, "SKU-LAST")
    expect(lamp.locator(".stock-text")).to_have_text("1 of 1 left")

    # While the page cannot refresh its stock, someone else takes the last unit: the click is refused.
    page.route(re.compile(r"/api/v1/products$"), lambda route: route.abort())
    expect(page.locator("#connection")).to_contain_text("Lost contact with the shop")
    erin = engine.reserve("SKU-LAST", "erin")
    lamp.get_by_role("button", name="Reserve: Last Lamp").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("^Sold out: Last Lamp has no units left"))
    expect(page.locator(".hold")).to_have_count(0)
    assert counters(engine, "SKU-LAST") == (0, 1, 0, 1)
    assert engine.user_counts("SKU-LAST", "dave").held == 0
    page.unroute(re.compile(r"/api/v1/products$"))
    expect(lamp.locator(".product-badge")).to_have_text("Sold out — held units may come back", timeout=10_000)
    expect(page.locator("#sale-clock")).to_have_text(re.compile("^Everything is sold out for now"))
    expect(page.locator("#connection")).to_be_hidden()
    page.screenshot(path=screenshots / "4-sold-out.png", full_page=True)

    # Erin's hold lapses; the sweeper returns the unit and the page offers it again.
    time.sleep(max(0, erin.expires_at - redis_now_ms(engine) + 50) / 1000)
    assert engine.expire_all() == 1
    expect(lamp.locator(".stock-text")).to_have_text("1 of 1 left")

    # Dave holds it for 3 seconds, does not pay, and the page tells him the hold ran out.
    lamp.get_by_role("button", name="Reserve: Last Lamp").click()
    expect(page.locator(".hold .hold-title")).to_have_text("1 × Last Lamp")
    assert counters(engine, "SKU-LAST") == (0, 1, 0, 1)
    expect(page.get_by_role("status")).to_have_text(
        "Your hold on Last Lamp expired and its units went back on sale.", timeout=10_000
    )
    expect(page.locator(".hold")).to_have_count(0)
    assert engine.expire_all() == 1
    assert counters(engine, "SKU-LAST") == (1, 0, 0, 1)
    expect(lamp.locator(".stock-text")).to_have_text("1 of 1 left")
    page.screenshot(path=screenshots / "5-expired.png", full_page=True)
    assert errors == []


def test_the_page_loads_only_its_own_assets_labels_its_controls_and_guides_sign_in(
    storefront: ApiServer, browser: BrowserContext
) -> None:
    """Nothing is loaded from outside the server (the network is closed); every control has a label; a
    server without demo sign-in (the default) makes the page ask for a token instead."""
    page = browser.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.goto(storefront.url + "/")
    expect(page.locator("#products")).to_have_attribute("aria-busy", "false")
    assert requested, "the page made no requests"
    assert all(url.startswith(storefront.url) or url.startswith("data:") for url in requested), requested
    assert page.locator("html").get_attribute("lang") == "en"

    page.get_by_label("Shopper name").fill("not a name!")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_label("Shopper name")).to_have_attribute("aria-invalid", "true")
    page.get_by_label("Shopper name").fill("grace")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("status")).to_have_text(re.compile("^Demo sign-in is off on this server"))
    expect(page.get_by_label("Bearer token")).to_be_focused()
    for control in page.locator("input, select").all():
        if control.is_visible():
            assert control.evaluate("el => el.labels.length") > 0, control.evaluate("el => el.outerHTML")


def test_the_countdown_opens_the_sale_and_refusals_read_as_plain_messages(
    storefront: ApiServer, engine: Engine, browser: BrowserContext, screenshots: Path
) -> None:
    page, errors = open_storefront(browser, storefront)
    sign_in(page, storefront, "frank")
    expect(page.locator("#sale-clock")).to_have_text("No sale is loaded yet.")

    # A sale loaded while the page is open appears by itself, with its countdown; at zero it opens.
    engine.load_sale(SaleSettings(
        sku="SKU-MUG", name="Mighty Mug", price_cents=2_000, flash_price_cents=900, total=10,
        per_user_limit=2, starts_at=redis_now_ms(engine) + 5_000, reservation_ttl_ms=300_000,
    ))  # fmt: skip
    mug = card(page, "SKU-MUG")
    expect(mug.locator(".product-badge")).to_have_text(re.compile(r"^Starts in 00:0[1-5]$"))
    expect(page.locator("#sale-clock")).to_have_text(re.compile(r"^The sale starts in 00:0[1-5]$"))
    expect(mug.get_by_role("button", name="Not open yet: Mighty Mug")).to_be_disabled()
    expect(mug.locator(".product-badge")).to_have_text("On sale now", timeout=9_000)
    reserve_mug = mug.get_by_role("button", name="Reserve: Mighty Mug")
    expect(reserve_mug).to_be_enabled()

    # Hold 1 of the 2 allowed: the page then offers only 1 more.
    mug.get_by_label("Quantity").select_option("1")
    reserve_mug.click()
    expect(page.locator(".hold .hold-title")).to_have_text("1 × Mighty Mug")
    assert counters(engine, "SKU-MUG") == (9, 1, 0, 10)
    page.reload()  # the token and the hold survive a reload; the server confirms the hold is still open
    expect(page.locator("#account-name")).to_have_text("frank")
    expect(page.locator(".hold .hold-title")).to_have_text("1 × Mighty Mug")
    expect(page.locator(".hold .hold-timer")).to_have_text(re.compile(r"^0[45]:\d\d$"))
    expect(mug.get_by_label("Quantity")).to_be_hidden()
    expect(reserve_mug).to_be_enabled()

    # Frank takes his second unit on another device; this page's next reserve passes the limit: refused.
    engine.reserve("SKU-MUG", "frank")
    reserve_mug.click()
    expect(page.get_by_role("status")).to_have_text(
        "You already hold Mighty Mug. Check out or release that hold before reserving more."
    )
    assert counters(engine, "SKU-MUG") == (8, 2, 0, 10)
    assert engine.user_counts("SKU-MUG", "frank").held == 2

    # The sale is paused while the page has not seen it yet: the refusal says the sale is not open.
    page.route(re.compile(r"/api/v1/products$"), lambda route: route.abort())
    expect(page.locator("#connection")).to_be_visible()
    engine.load_sale(SaleSettings(sku="SKU-MUG", paused=True))
    reserve_mug.click()
    expect(page.get_by_role("status")).to_have_text("The sale for Mighty Mug is not open right now.")
    assert counters(engine, "SKU-MUG") == (8, 2, 0, 10)
    page.unroute(re.compile(r"/api/v1/products$"))
    expect(mug.locator(".product-badge")).to_have_text("Sale paused", timeout=10_000)
    expect(mug.get_by_role("button", name="Paused: Mighty Mug")).to_be_disabled()
    expect(page.locator("#sale-clock")).to_have_text(re.compile("^The sale is paused"))
    page.screenshot(path=screenshots / "6-paused.png", full_page=True)

    # Releasing this page's hold gives its unit back at once (the other device's hold stays).
    page.locator(".hold").get_by_role("button", name="Release hold").click()
    expect(page.get_by_role("status")).to_have_text(
        "Released your hold on Mighty Mug; the units are back on sale."
    )
    expect(page.locator(".hold")).to_have_count(0)
    assert counters(engine, "SKU-MUG") == (9, 1, 0, 10)
    assert engine.user_counts("SKU-MUG", "frank").held == 1
    expect(mug.locator(".stock-text")).to_have_text("9 of 10 left · 1 on hold")
    assert errors == []


def test_with_demo_sign_in_a_shopper_signs_in_by_name_and_reserves(
    start_server: Callable[..., ApiServer], engine: Engine, browser: BrowserContext
) -> None:
    """`flashsale up` turns demo sign-in on: a name is enough, and the page then acts as that shopper."""
    now = redis_now_ms(engine)
    engine.load_sale(
        SaleSettings(
            sku="SKU-DEMO", name="Demo kettle", total=3, flash_price_cents=1999, starts_at=now - 1000
        )
    )
    storefront = start_server(demo_sign_in=True)
    page, errors = open_storefront(browser, storefront)
    page.get_by_label("Shopper name").fill("heidi")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.locator("#account-name")).to_have_text("heidi")
    card(page, "SKU-DEMO").get_by_role("button", name=re.compile("^Reserve")).click()
    expect(page.get_by_role("status")).to_have_text(re.compile(r"^Reserved 1 × Demo kettle\."))
    assert counters(engine, "SKU-DEMO") == (2, 1, 0, 3)
    assert engine.user_counts("SKU-DEMO", "heidi").held == 1
    assert errors == []


def test_a_waiting_room_shows_the_place_and_progress_then_the_reserve_button_once_admitted(
    storefront: ApiServer, engine: Engine, browser: BrowserContext, screenshots: Path
) -> None:
    """A sale with a waiting room: the card offers "Join the line"; in line it shows the place, a progress
    bar and an estimate, polled from the API; the admitter (its script, run here under a lease this test
    holds) lets the shoppers ahead in, then her; the Reserve button comes back and her hold is made."""
    now = redis_now_ms(engine)
    engine.load_sale(SaleSettings(
        sku="SKU-DROP", name="Limited Sneaker", price_cents=18_000, flash_price_cents=9_000, total=10,
        per_user_limit=1, starts_at=now - 1_000, reservation_ttl_ms=300_000,
    ))  # fmt: skip
    engine.set_waiting_room("SKU-DROP", WaitingRoom(admit_per_s=100, admission_ttl_ms=120_000))
    engine.redis.set(engine.keys.for_sku("SKU-DROP").admitter_lease("SKU-DROP"), "browser-test")
    for user in ("bob", "carol"):
        engine.join_queue("SKU-DROP", user)
    page, errors = open_storefront(browser, storefront)
    sign_in(page, storefront, "alice")
    drop = card(page, "SKU-DROP")
    drop.get_by_role("button", name="Join the line: Limited Sneaker").click()
    expect(drop.locator(".queue-text")).to_have_text("You are number 3 in line (2 ahead of you)")
    expect(drop.locator(".queue-estimate")).to_contain_text("to go")
    expect(drop.get_by_role("button", name="In line: Limited Sneaker")).to_be_disabled()
    assert drop.locator(".queue-progress").get_attribute("value") == "0"
    page.screenshot(path=screenshots / "6-in-line.png", full_page=True)

    assert engine.admit("SKU-DROP", "browser-test", batch=1).admitted == 1  # bob
    expect(drop.locator(".queue-text")).to_have_text("You are number 2 in line (1 ahead of you)")
    expect(drop.locator(".queue-progress")).to_have_attribute("value", "50")
    engine.admit("SKU-DROP", "browser-test", batch=2)  # carol, then alice
    expect(drop.locator(".queue-text")).to_have_text("It is your turn: reserve now.")
    drop.get_by_role("button", name="Reserve: Limited Sneaker").click()
    expect(page.locator(".hold .hold-title")).to_have_text("1 × Limited Sneaker")
    assert engine.user_counts("SKU-DROP", "alice").held == 1
    assert counters(engine, "SKU-DROP") == (9, 1, 0, 10)
    page.screenshot(path=screenshots / "7-admitted.png", full_page=True)
    assert errors == []
