import Hummingbird
import HTTPTypes
import NIOCore

/// `GET /`: a page where a person types an order id and watches its status timeline live, with
/// its script at `GET /app.js` and its styles at `GET /app.css`. They are compiled into the binary
/// so the one executable is the whole deployment, and served from our own origin so the
/// Content-Security-Policy can forbid every inline script and style.
struct LivePageController<Context: RequestContext> {
    func addRoutes(to router: Router<Context>) {
        router.get("/", use: page).allow([.get], on: "/")
        router.get("/app.js", use: script).allow([.get], on: "/app.js")
        router.get("/app.css", use: styles).allow([.get], on: "/app.css")
    }

    @Sendable func page(_ request: Request, context: Context) async throws -> Response {
        LivePage.response(LivePage.htmlBytes, contentType: "text/html; charset=utf-8")
    }

    @Sendable func script(_ request: Request, context: Context) async throws -> Response {
        LivePage.response(LivePage.scriptBytes, contentType: "text/javascript; charset=utf-8")
    }

    @Sendable func styles(_ request: Request, context: Context) async throws -> Response {
        LivePage.response(LivePage.styleBytes, contentType: "text/css; charset=utf-8")
    }
}

/// The page's three files and the headers they are served with (a generic type cannot hold them).
enum LivePage {
    /// Only our own script, styles, and requests to our own origin; nothing may frame the page.
    static let contentSecurityPolicy =
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"

    static func response(_ bytes: ByteBuffer, contentType: String) -> Response {
        Response(
            status: .ok,
            headers: [
                .contentType: contentType,
                .contentSecurityPolicy: contentSecurityPolicy,
                .xContentTypeOptions: "nosniff",
                HTTPField.Name("Referrer-Policy")!: "no-referrer",
                // Revalidate every load, so a new binary's page is never mixed with an old script.
                .cacheControl: "no-cache",
            ],
            body: .init(byteBuffer: bytes)
        )
    }

    static let htmlBytes = ByteBuffer(string: html)
    static let scriptBytes = ByteBuffer(string: script)
    static let styleBytes = ByteBuffer(string: styles)

    static let html = #"""
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Order status</title>
    <link rel="stylesheet" href="/app.css">
    <script src="/app.js" defer></script>
    </head>
    <body data-connection="idle">
    <main class="page">
      <header class="masthead">
        <h1>Order status</h1>
        <p class="lede">Type an order id to follow its status live, as each change commits.</p>
      </header>
      <form id="watch-form" class="watch-form" action="/" method="get" autocomplete="off">
        <label for="order-id" class="visually-hidden">Order id</label>
        <input id="order-id" name="order" type="text" placeholder="Order id, e.g. A1001" maxlength="64" spellcheck="false" required>
        <button id="watch-button" type="submit">Watch</button>
      </form>
      <noscript><p class="message">This page needs JavaScript to follow an order.</p></noscript>
      <p id="message" class="message" role="alert" hidden></p>
      <section id="order" class="card" hidden>
        <div class="order-head">
          <div>
            <div class="label">Order</div>
            <div id="order-title" class="order-title"></div>
          </div>
          <div id="connection" class="connection" data-state="idle" role="status">
            <span class="dot" aria-hidden="true"></span><span id="connection-text">Idle</span>
          </div>
        </div>
        <div class="current" aria-live="polite">
          <span id="current-status" class="badge"></span>
          <span id="current-detail" class="muted"></span>
        </div>
        <ol id="progress" class="progress" aria-label="Progress"></ol>
        <div id="terminal-banner" class="banner" role="status" hidden>
          <div id="terminal-title" class="banner-title"></div>
          <div id="terminal-text" class="banner-text"></div>
        </div>
        <h2>Timeline</h2>
        <ol id="timeline" class="timeline" aria-live="polite"></ol>
      </section>
      <footer class="footer">
        Updates arrive over <span id="transport">Server-Sent Events</span>; a dropped connection resumes where it left off.
      </footer>
    </main>
    </body>
    </html>

    """#

    static let script = #"""
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

    """#

    static let styles = #"""
    :root {
      color-scheme: light;
      --ink: #1d2433; --muted: #667085; --line: #e4e7ec; --paper: #ffffff; --ground: #f4f6fa;
      --accent: #3355dd; --accent-dark: #2240b8;
      font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
      color: var(--ink); background: var(--ground);
    }
    * { box-sizing: border-box; }
    body { margin: 0; min-height: 100vh; }
    .page { max-width: 760px; margin: 0 auto; padding: 40px 20px 32px; }
    .masthead h1 { margin: 0 0 4px; font-size: 28px; letter-spacing: -0.01em; }
    .lede { margin: 0 0 20px; color: var(--muted); }
    .visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
    .watch-form { display: flex; gap: 10px; margin-bottom: 16px; }
    .watch-form input {
      flex: 1; font: inherit; font-size: 16px; padding: 11px 14px; border: 1px solid #cfd4dc; border-radius: 10px;
      background: var(--paper); outline: none; transition: border-color .15s, box-shadow .15s;
    }
    .watch-form input:focus { border-color: var(--accent); box-shadow: 0 0 0 3px rgba(51, 85, 221, .18); }
    .watch-form button {
      font: inherit; font-size: 16px; font-weight: 600; padding: 11px 22px; border: 0; border-radius: 10px;
      background: var(--accent); color: #fff; cursor: pointer;
    }
    .watch-form button:hover { background: var(--accent-dark); }
    .message { margin: 0 0 16px; padding: 12px 14px; border-radius: 10px; background: #fff4e5; color: #8a4b00; border: 1px solid #ffd8a8; }
    .card { background: var(--paper); border: 1px solid var(--line); border-radius: 14px; padding: 22px 24px; box-shadow: 0 1px 3px rgba(16, 24, 40, .06); }
    .order-head { display: flex; justify-content: space-between; align-items: flex-start; gap: 12px; }
    .label { font-size: 12px; text-transform: uppercase; letter-spacing: .08em; color: var(--muted); }
    .order-title { font-size: 22px; font-weight: 650; font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; word-break: break-all; }
    .connection { display: inline-flex; align-items: center; gap: 7px; padding: 5px 11px; border-radius: 999px; font-size: 13px; font-weight: 600; background: #f2f4f7; color: var(--muted); white-space: nowrap; }
    .connection .dot { width: 8px; height: 8px; border-radius: 50%; background: currentColor; }
    .connection[data-state="live"], .connection[data-state="polling"] { background: #e7f6ec; color: #137333; }
    .connection[data-state="live"] .dot, .connection[data-state="polling"] .dot { animation: pulse 1.6s ease-in-out infinite; }
    .connection[data-state="reconnecting"], .connection[data-state="connecting"] { background: #fff4e5; color: #a15c00; }
    .connection[data-state="reconnecting"] .dot { animation: pulse .8s ease-in-out infinite; }
    .connection[data-state="ended"] { background: #eef0f4; color: #475467; }
    .connection[data-state="failed"] { background: #fdecec; color: #b42318; }
    @keyframes pulse { 50% { opacity: .3; } }
    .current { display: flex; align-items: center; gap: 12px; margin: 18px 0 6px; }
    .badge {
      display: inline-block; padding: 3px 10px; border-radius: 999px; font-size: 13px; font-weight: 600;
      text-transform: capitalize; background: #eef0f4; color: #344054; border: 1px solid transparent;
    }
    .badge-large { font-size: 17px; padding: 6px 16px; }
    .muted { color: var(--muted); font-size: 14px; }
    .status-pending { background: #eef2f7; color: #475467; border-color: #d0d5dd; }
    .status-paid { background: #eef1ff; color: #3538cd; border-color: #c7cffc; }
    .status-processing { background: #fff6e0; color: #975a00; border-color: #fbd88a; }
    .status-shipped { background: #e6f4fe; color: #0b6aa2; border-color: #a9dbfb; }
    .status-delivered { background: #e7f6ec; color: #137333; border-color: #a6dfb8; }
    .status-cancelled { background: #f2f4f7; color: #344054; border-color: #c4c9d2; }
    .status-failed { background: #fdecec; color: #b42318; border-color: #f6b9b4; }
    .progress { display: flex; list-style: none; padding: 0; margin: 18px 0 4px; counter-reset: step; }
    .step {
      flex: 1; position: relative; text-align: center; font-size: 12px; color: #98a2b3; text-transform: capitalize;
      padding-top: 26px;
    }
    .step::before {
      content: ""; position: absolute; top: 6px; left: calc(50% - 7px); width: 14px; height: 14px; border-radius: 50%;
      background: var(--paper); border: 2px solid #d0d5dd; z-index: 1;
    }
    .step + .step::after { content: ""; position: absolute; top: 13px; right: calc(50% + 9px); left: calc(-50% + 9px); height: 2px; background: #e4e7ec; }
    .step-done, .step-skipped { color: #475467; }
    .step-done::before { background: var(--accent); border-color: var(--accent); }
    .step-skipped::before { border-style: dashed; border-color: #98a2b3; }
    .step-done::after, .step-skipped::after { background: var(--accent) !important; }
    .step-current { font-weight: 700; color: var(--ink); }
    .step-current::before { box-shadow: 0 0 0 4px rgba(51, 85, 221, .18); }
    .step-stop::before { background: #b42318; border-color: #b42318; box-shadow: 0 0 0 4px rgba(180, 35, 24, .15); }
    .step-stop::after { background: #b42318 !important; }
    .step-stop { color: #b42318; }
    .banner { margin: 18px 0 4px; padding: 14px 16px; border-radius: 12px; border: 1px solid; }
    .banner-title { font-weight: 700; font-size: 16px; margin-bottom: 2px; }
    .banner-text { font-size: 14px; }
    .banner-delivered { background: #e7f6ec; border-color: #a6dfb8; color: #0e5a27; }
    .banner-cancelled { background: #f2f4f7; border-color: #c4c9d2; color: #344054; }
    .banner-failed { background: #fdecec; border-color: #f6b9b4; color: #912018; }
    h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .08em; color: var(--muted); margin: 26px 0 10px; font-weight: 600; }
    .timeline { list-style: none; margin: 0; padding: 0; }
    .timeline-item { display: flex; gap: 14px; position: relative; padding-bottom: 16px; }
    .timeline-item:not(:last-child)::before { content: ""; position: absolute; left: 6px; top: 18px; bottom: 0; width: 2px; background: var(--line); }
    .marker { flex: none; width: 14px; height: 14px; margin-top: 4px; border-radius: 50%; border: 3px solid var(--paper); background: currentColor; box-shadow: 0 0 0 2px currentColor; }
    .timeline-item:first-child .marker { width: 16px; height: 16px; margin-top: 3px; margin-left: -1px; margin-right: -1px; }
    .timeline-body { flex: 1; min-width: 0; }
    .headline { display: flex; align-items: center; gap: 10px; }
    .details { display: flex; flex-wrap: wrap; gap: 4px 14px; margin-top: 4px; font-size: 14px; }
    .details time { font-variant-numeric: tabular-nums; }
    .metadata {
      display: block; margin-top: 6px; padding: 6px 9px; border-radius: 8px; background: #f8f9fb; border: 1px solid var(--line);
      font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; color: #475467; overflow-wrap: anywhere;
    }
    .footer { margin-top: 22px; font-size: 13px; color: var(--muted); text-align: center; }

    """#
}
