"use strict";
// Follows one order: its history first, then live events over EventSource, or over the long
// poll where the browser has no EventSource. Every event is applied once, in id order.
// Several ids follow those orders side by side on one feed (one EventSource, however many orders:
// a browser holds at most six connections per host over HTTP/1.1), resuming from the feed's cursor.
(() => {
  const ORDER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
  const FORWARD_STATUSES = ["pending", "paid", "processing", "shipped", "delivered"];
  const TERMINAL_TEXT = {
    delivered: ["Delivered", "This order is complete. No further changes will come."],
    cancelled: ["Cancelled", "This order was cancelled. No further changes will come."],
    failed: ["Failed", "This order failed. No further changes will come."],
  };
  const HISTORY_PAGE_LIMIT = 1000;
  // The contract's limit of distinct orders on one feed.
  const FEED_ORDER_LIMIT = 100;
  const POLL_TIMEOUT_SECONDS = 25;
  const RETRY_FIRST_MS = 1000;
  const RETRY_MAX_MS = 15000;

  const byId = (id) => document.getElementById(id);
  const form = byId("watch-form");
  const input = byId("order-id");
  const message = byId("message");
  const orderSection = byId("order");
  const ordersSection = byId("orders");
  const timeline = byId("timeline");
  const usesEventSource = typeof window.EventSource === "function";
  byId("transport").textContent = usesEventSource ? "Server-Sent Events" : "long polling (no EventSource here)";

  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit", second: "2-digit", fractionalSecondDigits: 3 });
  const dateFormat = new Intl.DateTimeFormat(undefined, { year: "numeric", month: "short", day: "numeric" });

  const CONNECTION_TEXT = {
    idle: "Idle", connecting: "Connecting…", live: "Live", polling: "Live (long poll)",
    reconnecting: "Reconnecting…", ended: "Final", failed: "Not following",
  };
  function showConnection(state) {
    document.body.dataset.connection = state;
    // One indicator on the single order's card, one on the orders' table: only one is shown.
    for (const indicator of document.querySelectorAll(".connection")) {
      indicator.dataset.state = state;
      indicator.querySelector(".connection-text").textContent = CONNECTION_TEXT[state];
    }
  }

  function showMessage(text) {
    message.textContent = text;
    message.hidden = !text;
  }

  function badge(status, extraClass) {
    const span = document.createElement("span");
    span.className = "badge status-" + status + (extraClass ? " " + extraClass : "");
    span.textContent = status;
    return span;
  }

  // One followed order. A new order id stops the old watch before the new one starts.
  class OrderWatch {
    constructor(orderId) {
      this.orderId = orderId;
      this.lastEventId = 0;
      this.previousOccurredAt = null;
      this.visitedStatuses = new Set();
      this.source = null;
      this.aborter = new AbortController();
      this.stopped = false;
      this.retryDelay = RETRY_FIRST_MS;
    }

    stop() {
      this.stopped = true;
      this.aborter.abort();
      if (this.source) this.source.close();
    }

    get path() { return encodeURIComponent(this.orderId); }

    async start() {
      showConnection("connecting");
      await this.catchUp();
    }

    // Reads what happened after lastEventId from the event history, then goes live from there.
    async catchUp() {
      for (;;) {
        if (this.stopped) return;
        let response;
        try {
          response = await fetch(`/orders/${this.path}/events?after=${this.lastEventId}&limit=${HISTORY_PAGE_LIMIT}`,
                                 { signal: this.aborter.signal, cache: "no-store" });
        } catch (error) {
          if (this.stopped) return;
          await this.retryAfterTrouble("The service cannot be reached; retrying.");
          continue;
        }
        if (response.status === 404) { this.fail(`There is no order with the id “${this.orderId}”.`); return; }
        // With authorization on, a reader needs the order_status_token cookie; retrying cannot help.
        if (response.status === 401 || response.status === 403) { this.fail("You are not allowed to follow this order."); return; }
        if (!response.ok) { await this.retryAfterTrouble(`The service answered ${response.status}; retrying.`); continue; }
        const page = await response.json();
        if (this.stopped) return;
        orderSection.hidden = false;
        page.events.forEach((event) => this.apply(event));
        if (this.stopped) return;
        if (page.events.length < HISTORY_PAGE_LIMIT) break;
      }
      this.retryDelay = RETRY_FIRST_MS;
      showMessage("");
      if (usesEventSource) this.openStream(); else this.pollLoop();
    }

    openStream() {
      // The query names where to resume on the first connection; on its own reconnects the
      // browser sends Last-Event-ID, which the server prefers.
      const source = new EventSource(`/events/order-status/${this.path}?lastEventId=${this.lastEventId}`);
      this.source = source;
      source.addEventListener("open", () => { if (!this.stopped) showConnection("live"); });
      source.addEventListener("order-status", (message) => this.apply(JSON.parse(message.data)));
      source.addEventListener("error", () => {
        if (this.stopped) return;
        if (source.readyState === EventSource.CONNECTING) { showConnection("reconnecting"); return; }
        // Closed for good by a refusal (503 at capacity): the browser will not retry, so we do.
        source.close();
        this.retryAfterTrouble("The live stream was refused; retrying.").then(() => this.catchUp());
      });
    }

    async pollLoop() {
      showConnection("polling");
      while (!this.stopped) {
        let response;
        try {
          response = await fetch(`/orders/${this.path}/status/poll?after=${this.lastEventId}&timeout=${POLL_TIMEOUT_SECONDS}`,
                                 { signal: this.aborter.signal, cache: "no-store" });
        } catch (error) {
          if (this.stopped) return;
          await this.retryAfterTrouble("The service cannot be reached; retrying.");
          continue;
        }
        if (response.status === 401 || response.status === 403) { this.fail("You are not allowed to follow this order."); return; }
        if (!response.ok) { await this.retryAfterTrouble(`The service answered ${response.status}; retrying.`); continue; }
        const answer = await response.json();
        if (this.stopped) return;
        this.retryDelay = RETRY_FIRST_MS;
        showMessage("");
        showConnection("polling");
        answer.events.forEach((event) => this.apply(event));
        if (answer.terminal && !this.stopped) { this.finish(); return; }
      }
    }

    // Waits a growing, jittered delay so a restarting service is not met by every page at once.
    async retryAfterTrouble(text) {
      showConnection("reconnecting");
      showMessage(text);
      const delay = this.retryDelay * (0.8 + Math.random() * 0.4);
      this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }

    apply(event) {
      if (this.stopped || event.orderId !== this.orderId || event.id <= this.lastEventId) return;
      this.lastEventId = event.id;
      this.visitedStatuses.add(event.status);
      renderEvent(event, this.previousOccurredAt);
      renderCurrent(event, this.visitedStatuses);
      this.previousOccurredAt = new Date(event.occurredAt);
      if (event.terminal) this.finish();
    }

    // The server ends the stream after a terminal event; closing first keeps the browser from
    // reconnecting to an order that can never change again.
    finish() {
      this.stop();
      showConnection("ended");
    }

    fail(text) {
      this.stop();
      orderSection.hidden = true;
      showConnection("failed");
      showMessage(text);
    }
  }

  // Several orders on one feed: one EventSource (or one long poll) for all of them, one table
  // row per order showing its latest event. The browser's own reconnects send the last cursor as
  // Last-Event-ID (the `id:` of events and of `caught-up`), so they resume with no gap; our
  // reconnects after a refusal pass the cursor as `lastEventId`.
  class FeedWatch {
    constructor(orderIds) {
      this.orderIds = orderIds;
      this.cursor = null;
      // Per order: the last applied event id (a feed gives one order's events in ascending id).
      this.lastEventIds = new Map(orderIds.map((id) => [id, 0]));
      this.terminalOrders = new Set();
      this.duplicates = 0;
      this.caughtUp = false;
      this.source = null;
      this.aborter = new AbortController();
      this.stopped = false;
      this.retryDelay = RETRY_FIRST_MS;
    }

    stop() {
      this.stopped = true;
      this.aborter.abort();
      if (this.source) this.source.close();
    }

    get orderQuery() { return this.orderIds.map((id) => "order=" + encodeURIComponent(id)).join("&"); }

    start() {
      showConnection("connecting");
      renderFeedRows(this.orderIds);
      ordersSection.hidden = false;
      if (usesEventSource) this.openStream(); else this.pollLoop();
    }

    openStream() {
      const resume = this.cursor === null ? "" : "&lastEventId=" + encodeURIComponent(this.cursor);
      const source = new EventSource(`/events/order-status?${this.orderQuery}${resume}`);
      this.source = source;
      source.addEventListener("open", () => { if (!this.stopped) showConnection("live"); });
      source.addEventListener("order-status", (message) => {
        this.cursor = message.lastEventId;
        this.apply(JSON.parse(message.data));
      });
      source.addEventListener("caught-up", (message) => {
        this.cursor = message.lastEventId;
        this.caughtUp = true;
      });
      source.addEventListener("error", () => {
        if (this.stopped) return;
        if (source.readyState === EventSource.CONNECTING) { showConnection("reconnecting"); return; }
        // Closed for good: EventSource does not say why (a 404, a 400, a full instance's 503),
        // so the same question goes to the feed's poll, which answers at once with timeout=0.
        source.close();
        this.diagnose();
      });
    }

    async diagnose() {
      const resume = this.cursor === null ? "" : "&after=" + encodeURIComponent(this.cursor);
      let response;
      try {
        response = await fetch(`/poll/order-status?${this.orderQuery}${resume}&timeout=0`, { signal: this.aborter.signal, cache: "no-store" });
      } catch (error) {
        if (this.stopped) return;
        await this.retryAfterTrouble("The service cannot be reached; retrying.");
        if (!this.stopped) this.openStream();
        return;
      }
      if (await this.refused(response)) return;
      if (response.ok) {
        // Whatever the poll brought counts: it may be the terminal events that end the watch.
        const answer = await response.json().catch(() => null);
        if (this.stopped) return;
        if (answer) { answer.events.forEach((event) => this.apply(event)); this.cursor = answer.cursor; }
        if (this.stopped) return;
      }
      await this.retryAfterTrouble("The live stream was refused; retrying.");
      if (!this.stopped) this.openStream();
    }

    // Ends the watch on an answer that retrying cannot change; returns whether it did.
    async refused(response) {
      if (response.status === 401 || response.status === 403) { this.fail("You are not allowed to follow these orders."); return true; }
      if (response.status === 400 || response.status === 404) {
        const problem = await response.json().catch(() => null);
        const fallback = response.status === 404 ? "One of these orders does not exist." : "The service refused these order ids.";
        this.fail(problem && problem.detail ? problem.detail : fallback);
        return true;
      }
      return false;
    }

    async pollLoop() {
      showConnection("polling");
      while (!this.stopped) {
        const after = this.cursor === null ? "" : "&after=" + encodeURIComponent(this.cursor);
        let response;
        try {
          response = await fetch(`/poll/order-status?${this.orderQuery}${after}&timeout=${POLL_TIMEOUT_SECONDS}`,
                                 { signal: this.aborter.signal, cache: "no-store" });
        } catch (error) {
          if (this.stopped) return;
          await this.retryAfterTrouble("The service cannot be reached; retrying.");
          continue;
        }
        if (await this.refused(response)) return;
        if (!response.ok) { await this.retryAfterTrouble(`The service answered ${response.status}; retrying.`); continue; }
        const answer = await response.json();
        if (this.stopped) return;
        this.retryDelay = RETRY_FIRST_MS;
        showMessage("");
        showConnection("polling");
        answer.events.forEach((event) => this.apply(event));
        this.cursor = answer.cursor;
      }
    }

    async retryAfterTrouble(text) {
      showConnection("reconnecting");
      showMessage(text);
      const delay = this.retryDelay * (0.8 + Math.random() * 0.4);
      this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS);
      await new Promise((resolve) => setTimeout(resolve, delay));
    }

    apply(event) {
      if (this.stopped || !this.lastEventIds.has(event.orderId)) return;
      // A resume from the cursor repeats nothing; counted so that a test can tell if one did.
      if (event.id <= this.lastEventIds.get(event.orderId)) { this.duplicates += 1; return; }
      this.lastEventIds.set(event.orderId, event.id);
      this.retryDelay = RETRY_FIRST_MS;
      showMessage("");
      renderFeedRow(event);
      if (event.terminal) this.terminalOrders.add(event.orderId);
      // The server ends the feed once every listed order is terminal; closing first keeps the
      // browser from reconnecting only to be told 204.
      if (this.terminalOrders.size === this.orderIds.length) this.finish();
    }

    finish() {
      this.stop();
      showConnection("ended");
    }

    fail(text) {
      this.stop();
      ordersSection.hidden = true;
      showConnection("failed");
      showMessage(text);
    }
  }

  function renderFeedRows(orderIds) {
    byId("orders-title").textContent = `${orderIds.length} orders`;
    byId("order-rows").replaceChildren(...orderIds.map((orderId) => {
      const row = document.createElement("tr");
      row.dataset.orderId = orderId;
      row.dataset.eventIds = "";
      const id = document.createElement("th");
      id.scope = "row";
      id.className = "row-order";
      id.textContent = orderId;
      const status = document.createElement("td");
      status.className = "row-status";
      status.append(Object.assign(document.createElement("span"), { className: "muted", textContent: "waiting…" }));
      row.append(id, status, Object.assign(document.createElement("td"), { className: "row-version muted" }),
                 Object.assign(document.createElement("td"), { className: "row-change muted" }));
      return row;
    }));
  }

  function renderFeedRow(event) {
    const row = [...byId("order-rows").children].find((candidate) => candidate.dataset.orderId === event.orderId);
    if (!row) return;
    row.dataset.status = event.status;
    row.dataset.eventId = String(event.id);
    row.dataset.eventIds = row.dataset.eventIds ? `${row.dataset.eventIds} ${event.id}` : String(event.id);
    row.dataset.receivedAt = String(Date.now());
    row.classList.toggle("row-terminal", event.terminal);
    row.querySelector(".row-status").replaceChildren(badge(event.status));
    row.querySelector(".row-version").textContent = `v${event.version}`;
    const change = event.previousStatus ? `from ${event.previousStatus}` : "created";
    row.querySelector(".row-change").textContent = `${change} · ${timeFormat.format(new Date(event.occurredAt))}`;
  }

  function renderCurrent(event, visitedStatuses) {
    const current = byId("current-status");
    current.className = "badge badge-large status-" + event.status;
    current.textContent = event.status;
    current.dataset.status = event.status;
    byId("current-detail").textContent = `version ${event.version} · since ${timeFormat.format(new Date(event.occurredAt))}`;

    // The forward path, visited steps filled and skipped ones dashed; a cancelled or failed
    // order's path stops at the furthest step it reached, followed by where it stopped.
    const progress = byId("progress");
    progress.replaceChildren();
    const reached = FORWARD_STATUSES.indexOf(event.status);
    const furthestForward = Math.max(reached, ...[...visitedStatuses].map((status) => FORWARD_STATUSES.indexOf(status)));
    const shownSteps = reached < 0 ? FORWARD_STATUSES.slice(0, furthestForward + 1) : FORWARD_STATUSES;
    shownSteps.forEach((status, index) => {
      const step = document.createElement("li");
      step.textContent = status;
      step.className = "step" + (index <= furthestForward ? (visitedStatuses.has(status) ? " step-done" : " step-skipped") : "");
      if (status === event.status) step.className += " step-current";
      progress.append(step);
    });
    if (reached < 0) {
      const step = document.createElement("li");
      step.textContent = event.status;
      step.className = "step step-done step-current step-stop";
      progress.append(step);
    }

    const banner = byId("terminal-banner");
    banner.hidden = !event.terminal;
    if (event.terminal) {
      banner.className = "banner banner-" + event.status;
      const [title, text] = TERMINAL_TEXT[event.status] || [event.status, "No further changes will come."];
      byId("terminal-title").textContent = title;
      byId("terminal-text").textContent = `${text} Final at ${timeFormat.format(new Date(event.occurredAt))}.`;
    }
  }

  function renderEvent(event, previousOccurredAt) {
    const occurredAt = new Date(event.occurredAt);
    const item = document.createElement("li");
    item.className = "timeline-item";
    item.dataset.eventId = String(event.id);
    item.dataset.status = event.status;
    item.dataset.receivedAt = String(Date.now());

    const marker = document.createElement("span");
    marker.className = "marker status-" + event.status;
    item.append(marker);

    const body = document.createElement("div");
    body.className = "timeline-body";
    const headline = document.createElement("div");
    headline.className = "headline";
    headline.append(badge(event.status));
    const change = document.createElement("span");
    change.className = "muted";
    change.textContent = event.previousStatus ? `from ${event.previousStatus}` : "created";
    headline.append(change);
    body.append(headline);

    const details = document.createElement("div");
    details.className = "details";
    const time = document.createElement("time");
    time.dateTime = event.occurredAt;
    time.textContent = `${timeFormat.format(occurredAt)} · ${dateFormat.format(occurredAt)}`;
    details.append(time);
    const facts = [`v${event.version}`, `event ${event.id}`];
    if (previousOccurredAt) facts.push(`+${formatElapsed(occurredAt - previousOccurredAt)}`);
    const factText = document.createElement("span");
    factText.className = "muted";
    factText.textContent = facts.join(" · ");
    details.append(factText);
    body.append(details);

    if (event.metadata) {
      const metadata = document.createElement("code");
      metadata.className = "metadata";
      metadata.textContent = JSON.stringify(event.metadata);
      body.append(metadata);
    }
    item.append(body);
    timeline.prepend(item);
  }

  function formatElapsed(milliseconds) {
    if (milliseconds < 1000) return `${Math.max(0, Math.round(milliseconds))} ms`;
    if (milliseconds < 60000) return `${(milliseconds / 1000).toFixed(1)} s`;
    if (milliseconds < 3600000) return `${Math.round(milliseconds / 60000)} min`;
    return `${(milliseconds / 3600000).toFixed(1)} h`;
  }

  let watch = null;
  // One id follows that order's own stream and history; several follow them on one feed.
  function follow(text) {
    const orderIds = [...new Set(text.split(/[\s,]+/).filter(Boolean))];
    if (watch) watch.stop();
    watch = null;
    ordersSection.hidden = true;
    if (orderIds.length <= 1) { followOne(orderIds[0] || ""); return; }
    orderSection.hidden = true;
    const malformed = orderIds.find((orderId) => !ORDER_ID_PATTERN.test(orderId));
    if (malformed !== undefined || orderIds.length > FEED_ORDER_LIMIT) {
      showConnection("failed");
      showMessage(malformed !== undefined
        ? `“${malformed}” is not an order id: an order id is 1 to 64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit.`
        : `At most ${FEED_ORDER_LIMIT} orders can be followed at once, not ${orderIds.length}.`);
      return;
    }
    showMessage("");
    watch = new FeedWatch(orderIds);
    watch.start();
  }

  function followOne(orderId) {
    timeline.replaceChildren();
    byId("terminal-banner").hidden = true;
    byId("order-title").textContent = orderId;
    if (!ORDER_ID_PATTERN.test(orderId)) {
      orderSection.hidden = true;
      showConnection("failed");
      showMessage("An order id is 1 to 64 letters, digits, '.', '_', ':' or '-', starting with a letter or digit.");
      return;
    }
    showMessage("");
    watch = new OrderWatch(orderId);
    watch.start();
  }

  form.addEventListener("submit", (submit) => {
    submit.preventDefault();
    const text = input.value.trim();
    // The address names the orders, so a reload or a shared link follows the same ones.
    const ids = text.split(/[\s,]+/).filter(Boolean);
    history.replaceState(null, "", "?" + ids.map((id) => "order=" + encodeURIComponent(id)).join("&"));
    follow(text);
  });

  // For tests and curious people: what the page is connected with right now.
  window.orderStatusPage = {
    get orderId() { return watch && watch.orderId !== undefined ? watch.orderId : null; },
    get lastEventId() { return watch && watch.lastEventId !== undefined ? watch.lastEventId : null; },
    get orderIds() { return watch ? (watch.orderIds || [watch.orderId]) : []; },
    get cursor() { return watch && watch.cursor !== undefined ? watch.cursor : null; },
    get caughtUp() { return watch ? watch.caughtUp === true : false; },
    get duplicates() { return watch && watch.duplicates !== undefined ? watch.duplicates : 0; },
    get transport() { return usesEventSource ? "eventsource" : "long-poll"; },
    get eventSourceReadyState() { return watch && watch.source ? watch.source.readyState : null; },
  };

  const requested = new URLSearchParams(location.search).getAll("order").join(" ").trim();
  if (requested) { input.value = requested; follow(requested); }
})();
