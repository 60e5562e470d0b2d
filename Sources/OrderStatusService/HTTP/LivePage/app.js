"use strict";
// Follows one order: its history first, then live events over EventSource, or over the long
// poll where the browser has no EventSource. Every event is applied once, in id order.
(() => {
  const ORDER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/;
  const FORWARD_STATUSES = ["pending", "paid", "processing", "shipped", "delivered"];
  const TERMINAL_TEXT = {
    delivered: ["Delivered", "This order is complete. No further changes will come."],
    cancelled: ["Cancelled", "This order was cancelled. No further changes will come."],
    failed: ["Failed", "This order failed. No further changes will come."],
  };
  const HISTORY_PAGE_LIMIT = 1000;
  const POLL_TIMEOUT_SECONDS = 25;
  const RETRY_FIRST_MS = 1000;
  const RETRY_MAX_MS = 15000;

  const byId = (id) => document.getElementById(id);
  const form = byId("watch-form");
  const input = byId("order-id");
  const message = byId("message");
  const orderSection = byId("order");
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
    byId("connection").dataset.state = state;
    byId("connection-text").textContent = CONNECTION_TEXT[state];
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
  function follow(orderId) {
    if (watch) watch.stop();
    watch = null;
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
    const orderId = input.value.trim();
    // The address names the order, so a reload or a shared link follows the same one.
    history.replaceState(null, "", "?order=" + encodeURIComponent(orderId));
    follow(orderId);
  });

  // For tests and curious people: what the page is connected with right now.
  window.orderStatusPage = {
    get orderId() { return watch ? watch.orderId : null; },
    get lastEventId() { return watch ? watch.lastEventId : null; },
    get transport() { return usesEventSource ? "eventsource" : "long-poll"; },
    get eventSourceReadyState() { return watch && watch.source ? watch.source.readyState : null; },
  };

  const requested = new URLSearchParams(location.search).get("order");
  if (requested) { input.value = requested; follow(requested.trim()); }
})();
