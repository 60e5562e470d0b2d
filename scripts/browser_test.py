"""The live page in a real browser: headless Chromium driven by Selenium against the built
service and a real PostgreSQL (DATABASE_URL). Run through scripts/browser-test.sh.

Checks, in order:
  1. a typed order id shows the order's current status, live over EventSource;
  2. POSTed changes show on the page within 1 s (measured from just before the POST);
  3. the service going away shows "reconnecting", and the page resumes with Last-Event-ID, so a
     change made meanwhile (through a second instance) shows once, with no duplicate;
  4. a terminal status shows its banner, the EventSource is closed and never reconnects;
  5. an unknown order id says so;
  6. several ids typed at once follow those orders on one feed EventSource, one row each: both
     rows update within 1 s of their POSTs; the service going away and coming back resumes from
     the feed cursor (changes made meanwhile show, in order, and nothing is delivered twice); when
     both are terminal the EventSource is closed and never reconnects;
  7. with EventSource deleted before the page's script runs, the long poll carries the changes,
     for one order and for several on the feed's poll;
  8. the console shows no script error and no Content-Security-Policy refusal.
Screenshots go to .ci-artifacts/."""

import json
import os
import shutil
import sys
import time
import urllib.parse
import uuid

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from live_service import ROOT, CheckFailed, ServiceProcess, check, metric, post_json, request, say, wait_until

SCRIPT = "browser-test"
ARTIFACTS = os.path.join(ROOT, ".ci-artifacts")
# The page must show a change within this long of its POST being sent.
SHOW_LIMIT_SECONDS = 1.0
# A short retry makes the browser's own reconnects quick, and the no-reconnect window short.
RETRY_MILLISECONDS = 300
SERVICE_SETTINGS = {"SSE_RETRY_MS": str(RETRY_MILLISECONDS), "SSE_RETRY_JITTER_PERCENT": "20", "SHUTDOWN_SPREAD_SECONDS": "0"}


def log(line):
    say(SCRIPT, line)


def start_browser():
    options = Options()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1000,1180", "--lang=en-US", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    # The performance log holds every network request the page made, EventSource ones included.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)


class NetworkLog:
    """Counts the page's requests by URL fragment, from Chromium's performance log."""

    def __init__(self, driver):
        self.driver = driver
        self.urls = []
        driver.get_log("performance")  # drops what earlier checks left, so counts start here

    def count(self, fragment):
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.urls.append(message["params"]["request"]["url"])
        return sum(1 for url in self.urls if fragment in url)


def page_state(driver):
    return driver.execute_script("""
        const current = document.getElementById("current-status");
        const banner = document.getElementById("terminal-banner");
        return {
          connection: document.body.dataset.connection,
          status: current ? current.dataset.status || null : null,
          bannerShown: banner ? !banner.hidden : false,
          bannerText: banner ? banner.textContent.trim() : "",
          message: document.getElementById("message").hidden ? "" : document.getElementById("message").textContent,
          eventIds: [...document.querySelectorAll("#timeline [data-event-id]")].map((item) => Number(item.dataset.eventId)),
          eventSourceReadyState: window.orderStatusPage ? window.orderStatusPage.eventSourceReadyState : null,
          transport: window.orderStatusPage ? window.orderStatusPage.transport : null,
          ordersShown: !document.getElementById("orders").hidden,
          rows: Object.fromEntries([...document.querySelectorAll("#order-rows tr")].map((row) => [row.dataset.orderId, {
            status: row.dataset.status || null,
            eventIds: row.dataset.eventIds ? row.dataset.eventIds.split(" ").map(Number) : [],
            receivedAt: Number(row.dataset.receivedAt || 0),
          }])),
          caughtUp: window.orderStatusPage ? window.orderStatusPage.caughtUp : false,
          duplicates: window.orderStatusPage ? window.orderStatusPage.duplicates : 0,
        };
    """)


def wait_for_page(driver, what, predicate, timeout=10.0):
    return wait_until(what, lambda: (lambda state: state if predicate(state) else None)(page_state(driver)), timeout=timeout, interval=0.01)


def watch(driver, base_url, order_id):
    driver.get(base_url + "/")
    field = driver.find_element(By.ID, "order-id")
    field.clear()
    field.send_keys(order_id)
    driver.find_element(By.ID, "watch-button").click()


def change_and_time(driver, base_url, order_id, status, metadata=None):
    """POSTs a change and returns (seconds until the page rendered it, seconds until the test saw it)."""
    sent = time.time()
    answer = post_json(base_url, f"/orders/{order_id}/status", {"status": status, "metadata": metadata}, 200)
    event_id = answer["event"]["id"]
    wait_for_page(driver, f"the page to show {status}", lambda state: state["status"] == status and event_id in state["eventIds"],
                  timeout=10)
    seen = time.time() - sent
    rendered_at_ms = driver.execute_script(
        "return Number(document.querySelector(`#timeline [data-event-id='${arguments[0]}']`).dataset.receivedAt);", event_id)
    rendered = rendered_at_ms / 1000 - sent
    check(rendered < SHOW_LIMIT_SECONDS and seen < SHOW_LIMIT_SECONDS,
          f"{status} showed {rendered * 1000:.0f} ms after its POST (test saw it at {seen * 1000:.0f} ms); the limit is {SHOW_LIMIT_SECONDS:g} s")
    return rendered, seen


def change_row_and_time(driver, base_url, order_id, status, metadata=None):
    """POSTs a change to one of the followed orders; returns seconds until its row rendered it."""
    sent = time.time()
    answer = post_json(base_url, f"/orders/{order_id}/status", {"status": status, "metadata": metadata}, 200)
    event_id = answer["event"]["id"]
    state = wait_for_page(driver, f"the row of {order_id} to show {status}",
                          lambda s: order_id in s["rows"] and event_id in s["rows"][order_id]["eventIds"], timeout=10)
    seen = time.time() - sent
    rendered = state["rows"][order_id]["receivedAt"] / 1000 - sent
    check(rendered < SHOW_LIMIT_SECONDS and seen < SHOW_LIMIT_SECONDS,
          f"{order_id} {status} showed {rendered * 1000:.0f} ms after its POST (test saw it at {seen * 1000:.0f} ms); "
          f"the limit is {SHOW_LIMIT_SECONDS:g} s")
    check(state["rows"][order_id]["status"] == status, f"the row of {order_id} shows {state['rows'][order_id]['status']}")
    return rendered


def check_console_clean(driver, scenario):
    """No script error and no Content-Security-Policy refusal in the console. (Refused connections
    while the service is down, and the unknown order's 404, are expected there and pass.)"""
    problems = [entry["message"] for entry in driver.get_log("browser")
                if "Uncaught" in entry["message"] or "Content Security Policy" in entry["message"]]
    check(not problems, f"{scenario}: the browser console shows {problems}")


def event_ids(base_url, order_id):
    _, _, body = request(base_url, "GET", f"/orders/{order_id}/events?after=0&limit=1000")
    return [event["id"] for event in json.loads(body)["events"]]


def screenshot(driver, name):
    os.makedirs(ARTIFACTS, exist_ok=True)
    path = os.path.join(ARTIFACTS, name)
    driver.save_screenshot(path)
    log(f"screenshot: {path}")


def test_event_source(driver, service, spare, timings):
    network = NetworkLog(driver)
    # A colon, which the page sends percent-encoded (encodeURIComponent): the service decodes path ids.
    order_id = f"web:{uuid.uuid4().hex[:10]}"
    path_id = urllib.parse.quote(order_id, safe="")
    post_json(service.base_url, "/orders", {"id": order_id, "metadata": {"customer": "c-42", "channel": "web"}}, 201)
    watch(driver, service.base_url, order_id)
    state = wait_for_page(driver, "the initial status, live", lambda s: s["status"] == "pending" and s["connection"] == "live")
    check(state["transport"] == "eventsource", f"the page uses {state['transport']}, not EventSource")
    check(network.count(f"/events/order-status/{path_id}") == 1, "one EventSource connection")
    log(f"page shows {order_id} as pending, live over EventSource")

    # The stream is registered on the hub before the change, so this times live delivery, not replay.
    wait_until("the page's stream to be open", lambda: metric(service.base_url, "order_status_open_streams") >= 1)
    for status, metadata in (("paid", {"paymentRef": "p-1"}), ("processing", None)):
        rendered, seen = change_and_time(driver, service.base_url, order_id, status, metadata)
        timings.append(rendered)
        log(f"POST -> page shows {status}: {rendered * 1000:.0f} ms (test saw it after {seen * 1000:.0f} ms)")

    screenshot(driver, "live-page-live.png")

    # Reconnect: the instance stops, the page says so, a change commits through another instance,
    # and when the first comes back the page resumes after the last id it saw.
    service.stop()
    wait_for_page(driver, "the page to show reconnecting", lambda s: s["connection"] == "reconnecting")
    log("service stopped: page shows reconnecting")
    screenshot(driver, "live-page-reconnecting.png")
    post_json(spare.base_url, f"/orders/{order_id}/status", {"status": "shipped", "metadata": {"carrier": "DHL"}}, 200)
    service.start()
    state = wait_for_page(driver, "the page to resume and show shipped", lambda s: s["status"] == "shipped" and s["connection"] == "live")
    stored = event_ids(service.base_url, order_id)
    check(sorted(state["eventIds"]) == stored and len(set(state["eventIds"])) == len(state["eventIds"]),
          f"after the reconnect the timeline holds {state['eventIds']}, the order has {stored}")
    log(f"service back: page resumed with shipped, timeline = the order's {len(stored)} events, no duplicate")

    wait_until("the page's stream to be open again", lambda: metric(service.base_url, "order_status_open_streams") >= 1)
    rendered, seen = change_and_time(driver, service.base_url, order_id, "delivered", {"signedBy": "R. Diaz"})
    timings.append(rendered)
    log(f"POST -> page shows delivered: {rendered * 1000:.0f} ms (test saw it after {seen * 1000:.0f} ms)")
    state = wait_for_page(driver, "the terminal state", lambda s: s["bannerShown"] and s["connection"] == "ended")
    check("Delivered" in state["bannerText"], f"terminal banner says {state['bannerText']!r}")
    check(state["eventSourceReadyState"] == 2, f"EventSource readyState is {state['eventSourceReadyState']}, not CLOSED (2)")
    connections = network.count(f"/events/order-status/{path_id}")
    # An absence cannot be awaited: watch for several retry intervals that no reconnect comes.
    time.sleep(6 * RETRY_MILLISECONDS * 1.2 / 1000)
    check(network.count(f"/events/order-status/{path_id}") == connections, "the page reconnected after the terminal event")
    check(page_state(driver)["connection"] == "ended", "the page left the terminal state")
    log(f"terminal: banner {state['bannerText']!r}, EventSource closed, no reconnect in {6 * RETRY_MILLISECONDS * 1.2:.0f} ms")
    screenshot(driver, "live-page.png")
    check_console_clean(driver, "EventSource")


def test_feed(driver, service, spare, timings):
    """Two orders typed at once: one feed EventSource carries both rows."""
    network = NetworkLog(driver)
    first, second = f"dash-a-{uuid.uuid4().hex[:8]}", f"dash:b-{uuid.uuid4().hex[:8]}"
    post_json(service.base_url, "/orders", {"id": first, "metadata": {"customer": "c-1"}}, 201)
    post_json(service.base_url, "/orders", {"id": second}, 201)
    post_json(service.base_url, f"/orders/{second}/status", {"status": "paid"}, 200)
    watch(driver, service.base_url, f"{first} {second}")
    state = wait_for_page(driver, "both rows, live", lambda s: s["connection"] == "live" and s["caughtUp"]
                          and s["rows"].get(first, {}).get("status") == "pending" and s["rows"].get(second, {}).get("status") == "paid")
    check(state["ordersShown"] and list(state["rows"]) == [first, second], f"the rows are {list(state['rows'])}")
    check(state["transport"] == "eventsource", f"the page uses {state['transport']}, not EventSource")
    check(network.count("/events/order-status?") == 1, "one feed EventSource for both orders")
    check(network.count("/events/order-status/") == 0, "a per-order stream was opened")
    check("order=" + urllib.parse.quote(second, safe="") in driver.current_url, f"the address {driver.current_url} does not name both")
    log(f"page follows {first} (pending) and {second} (paid) on one feed EventSource")

    wait_until("the page's feed to be open", lambda: metric(service.base_url, "order_status_open_feeds") >= 1)
    for order_id, status in ((first, "paid"), (second, "shipped")):
        rendered = change_row_and_time(driver, service.base_url, order_id, status)
        timings.append(rendered)
        log(f"feed: POST -> row of {order_id} shows {status}: {rendered * 1000:.0f} ms")
    screenshot(driver, "live-page-feed.png")

    # Down and back: two changes of the first order commit meanwhile (through the other
    # instance). Resuming from the cursor brings both, in order; without it, the feed would send
    # only the latest of each order again, skipping one and repeating the second order's.
    connections = network.count("/events/order-status?")
    service.stop()
    wait_for_page(driver, "the page to show reconnecting", lambda s: s["connection"] == "reconnecting")
    post_json(spare.base_url, f"/orders/{first}/status", {"status": "processing"}, 200)
    post_json(spare.base_url, f"/orders/{first}/status", {"status": "shipped"}, 200)
    service.start()
    state = wait_for_page(driver, "the page to resume and show shipped",
                          lambda s: s["rows"][first]["status"] == "shipped" and s["connection"] == "live")
    check(network.count("/events/order-status?") > connections, "the page did not reconnect")
    check(state["rows"][first]["eventIds"] == event_ids(service.base_url, first),
          f"after the reconnect the row of {first} applied {state['rows'][first]['eventIds']}, the order has {event_ids(service.base_url, first)}")
    check(state["duplicates"] == 0, f"the resumed feed delivered {state['duplicates']} event(s) again")
    log(f"service back: feed resumed from its cursor, {first} shows processing then shipped, nothing twice")

    wait_until("the page's feed to be open again", lambda: metric(service.base_url, "order_status_open_feeds") >= 1)
    timings.append(change_row_and_time(driver, service.base_url, first, "delivered"))
    check(page_state(driver)["connection"] == "live", "one terminal order of two ended the watch")
    timings.append(change_row_and_time(driver, service.base_url, second, "failed"))
    state = wait_for_page(driver, "the feed to end", lambda s: s["connection"] == "ended")
    check(state["eventSourceReadyState"] == 2, f"EventSource readyState is {state['eventSourceReadyState']}, not CLOSED (2)")
    connections = network.count("/events/order-status?")
    time.sleep(6 * RETRY_MILLISECONDS * 1.2 / 1000)
    check(network.count("/events/order-status?") == connections, "the page reconnected after both orders were terminal")
    log(f"feed: both terminal, EventSource closed, no reconnect in {6 * RETRY_MILLISECONDS * 1.2:.0f} ms")
    screenshot(driver, "live-page-feed-final.png")
    check_console_clean(driver, "feed")


def test_unknown_order(driver, service):
    order_id = f"missing-{uuid.uuid4().hex[:8]}"
    watch(driver, service.base_url, order_id)
    state = wait_for_page(driver, "the not-found message", lambda s: "no order" in s["message"])
    check(state["connection"] == "failed", f"connection shows {state['connection']} for an unknown order")
    log(f"unknown order: {state['message']!r}")

    # Among several: the feed's 404 closes its EventSource, and the page asks the poll why.
    known = f"known-{uuid.uuid4().hex[:8]}"
    post_json(service.base_url, "/orders", {"id": known}, 201)
    watch(driver, service.base_url, f"{known} {order_id}")
    state = wait_for_page(driver, "the not-found message for the feed", lambda s: s["message"] and s["connection"] == "failed")
    check(not state["ordersShown"], "the orders' table is still shown")
    log(f"unknown order among several: {state['message']!r}")
    check_console_clean(driver, "unknown order")


def test_long_poll_fallback(driver, service, timings):
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": "delete window.EventSource;"})
    network = NetworkLog(driver)
    order_id = f"poll-{uuid.uuid4().hex[:10]}"
    post_json(service.base_url, "/orders", {"id": order_id, "status": "paid", "metadata": {"customer": "c-7"}}, 201)
    watch(driver, service.base_url, order_id)
    check(driver.execute_script("return typeof window.EventSource") == "undefined", "EventSource is still there")
    state = wait_for_page(driver, "the initial status over the long poll", lambda s: s["status"] == "paid" and s["connection"] == "polling")
    check(state["transport"] == "long-poll", f"the page uses {state['transport']}")
    log(f"long poll: page shows {order_id} as paid without EventSource")

    # The page's poll is held on the server before the change, so the change is what answers it.
    wait_until("the page's poll to be held", lambda: metric(service.base_url, "order_status_held_polls") >= 1)
    rendered, seen = change_and_time(driver, service.base_url, order_id, "shipped", {"carrier": "UPS"})
    timings.append(rendered)
    log(f"long poll: POST -> page shows shipped: {rendered * 1000:.0f} ms (test saw it after {seen * 1000:.0f} ms)")

    wait_until("the page's next poll to be held", lambda: metric(service.base_url, "order_status_held_polls") >= 1)
    change_and_time(driver, service.base_url, order_id, "failed", {"reason": "lost in transit"})
    state = wait_for_page(driver, "the terminal state over the long poll", lambda s: s["bannerShown"] and s["connection"] == "ended")
    check("Failed" in state["bannerText"], f"terminal banner says {state['bannerText']!r}")
    wait_until("no held poll after the terminal event", lambda: metric(service.base_url, "order_status_held_polls") == 0)
    polls = network.count(f"/orders/{order_id}/status/poll")
    check(network.count("/events/order-status/") == 0, "the fallback page opened an event stream")
    # As above: watch a while that no further poll is sent for a terminal order.
    time.sleep(1.5)
    check(network.count(f"/orders/{order_id}/status/poll") == polls, "the page kept polling after the terminal event")
    log(f"long poll: terminal banner {state['bannerText']!r}, {polls} polls in all, polling stopped")
    screenshot(driver, "live-page-long-poll.png")

    # Several orders without EventSource: the feed's long poll carries both rows.
    first, second = f"poll-a-{uuid.uuid4().hex[:8]}", f"poll-b-{uuid.uuid4().hex[:8]}"
    post_json(service.base_url, "/orders", {"id": first}, 201)
    post_json(service.base_url, "/orders", {"id": second, "status": "shipped"}, 201)
    watch(driver, service.base_url, f"{first} {second}")
    wait_for_page(driver, "both rows over the feed's poll", lambda s: s["connection"] == "polling"
                  and s["rows"].get(first, {}).get("status") == "pending" and s["rows"].get(second, {}).get("status") == "shipped")
    # Whether a change meets a held poll or the next one, it must show within the same limit.
    timings.append(change_row_and_time(driver, service.base_url, first, "cancelled"))
    timings.append(change_row_and_time(driver, service.base_url, second, "delivered"))
    wait_for_page(driver, "the feed over the poll to end", lambda s: s["connection"] == "ended")
    polls = network.count("/poll/order-status?")
    check(polls >= 2, f"{polls} feed polls")
    check(network.count("/events/order-status") == 0, "the fallback page opened an event stream")
    time.sleep(1.5)
    check(network.count("/poll/order-status?") == polls, "the page kept polling the feed after both terminal events")
    log(f"long poll of the feed: both rows updated, {polls} polls in all, polling stopped")
    check_console_clean(driver, "long poll")


def main():
    service = ServiceProcess(settings=SERVICE_SETTINGS, name="order-status")
    spare = ServiceProcess(settings=SERVICE_SETTINGS, name="order-status-spare")
    driver = None
    services = [service, spare]
    try:
        service.start()
        spare.start()
        log(f"services at {service.base_url} and {spare.base_url}")
        driver = start_browser()
        log(f"browser: {driver.capabilities.get('browserName')} {driver.capabilities.get('browserVersion')}")
        timings = []
        test_event_source(driver, service, spare, timings)
        test_feed(driver, service, spare, timings)
        test_unknown_order(driver, service)
        test_long_poll_fallback(driver, service, timings)
        log(f"POST-to-page-shown: max {max(timings) * 1000:.0f} ms over {len(timings)} changes "
            f"({', '.join(f'{t * 1000:.0f}' for t in timings)} ms)")
        log("passed")
        return 0
    except (CheckFailed, WebDriverException) as failure:
        log(f"FAILED: {failure}")
        if driver is not None:
            try:
                screenshot(driver, "live-page-failure.png")
                for entry in driver.get_log("browser"):
                    log(f"browser console: {entry['message']}")
            except WebDriverException:
                pass
        for running in services:
            log(f"--- {running.name} log (last lines) ---\n{running.log_tail()}")
        return 1
    finally:
        if driver is not None:
            driver.quit()
        for running in services:
            running.stop()
            running.remove_log()


if __name__ == "__main__":
    sys.exit(main())
