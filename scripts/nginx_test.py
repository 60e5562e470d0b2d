"""The service behind a real nginx configured by deploy/nginx.conf (only its upstream address and
listen port substituted), inside an http block that compresses text (as many hosts' do) and
ignores the service's X-Accel-Buffering, so streaming rests on the committed file alone. Run
through scripts/nginx-test.sh. Checks through nginx:
  - plain REST works and X-Request-Id is passed back (the client's, else one nginx made);
  - an SSE event arrives uncompressed and unbuffered, at once: POST-to-receipt time printed,
    limit 500 ms;
  - heartbeat comments pass (the service runs with HEARTBEAT_SECONDS=1);
  - Last-Event-ID reaches the service (replay on reconnect);
  - a held long poll is answered by a change;
  - after a terminal event the stream ends at the client;
  - deploy/two-instances/nginx-upstream.conf spreads streams over two instances, and a change
    committed on either reaches every stream."""

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid

from live_service import ROOT, CheckFailed, ServiceProcess, check, free_port, metric, post_json, request, say, wait_until

SCRIPT = "nginx-test"
NGINX_CONF = os.path.join(ROOT, "deploy", "nginx.conf")
TWO_INSTANCE_UPSTREAM = os.path.join(ROOT, "deploy", "two-instances", "nginx-upstream.conf")
# Through a local proxy an event should take a few milliseconds; buffering would take seconds.
DELIVERY_LIMIT_SECONDS = 0.5


def log(line):
    say(SCRIPT, line)


def site_config(service_ports, nginx_port):
    """deploy/nginx.conf with the test's addresses: the substitutions a deployment would make. With
    two service ports, its upstream block is replaced by deploy/two-instances/nginx-upstream.conf."""
    with open(NGINX_CONF) as committed:
        text = committed.read()
    text, listens = re.subn(r"(?m)^(\s*listen\s+)80;", rf"\g<1>127.0.0.1:{nginx_port};", text)
    check(listens == 1, f"deploy/nginx.conf must hold one `listen 80;` line (found {listens})")
    if len(service_ports) == 1:
        text, upstreams = re.subn(r"(?m)^(\s*server\s+)127\.0\.0\.1:8080;", rf"\g<1>127.0.0.1:{service_ports[0]};", text)
        check(upstreams == 1, f"deploy/nginx.conf must hold one `server 127.0.0.1:8080;` line (found {upstreams})")
        return text
    with open(TWO_INSTANCE_UPSTREAM) as committed:
        upstream = committed.read()
    for example_port, port in zip((8081, 8082), service_ports):
        upstream, found = re.subn(rf"127\.0\.0\.1:{example_port}\b", f"127.0.0.1:{port}", upstream)
        check(found == 1, f"{TWO_INSTANCE_UPSTREAM} must name 127.0.0.1:{example_port} once (found {found})")
    text, blocks = re.subn(r"(?ms)^upstream order_status \{.*?^\}\n", lambda _: upstream, text)
    check(blocks == 1, f"deploy/nginx.conf must hold one `upstream order_status` block (found {blocks})")
    return text


def main_config(prefix, site_path):
    """A private nginx: its own pid, logs and temp files under `prefix`, in the foreground."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(f"    {kind}_temp_path {prefix}/{kind}_temp;" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format timed '$remote_addr "$request" $status $body_bytes_sent rid=$request_id rt=$request_time urt=$upstream_response_time';
    access_log {prefix}/access.log timed;
{temp}
    # A host's http block often compresses text, which would hold events back; the committed
    # file must turn that off for streams. And the service's own X-Accel-Buffering: no is
    # ignored, so buffering is left to the committed file alone.
    gzip on;
    gzip_min_length 0;
    gzip_types application/json text/event-stream text/css text/javascript;
    proxy_ignore_headers X-Accel-Buffering;
    include {site_path};
}}
"""


class Nginx:
    def __init__(self, service_ports):
        self.port = free_port()
        self.prefix = tempfile.mkdtemp(prefix="order-status-nginx.")
        self.binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.site_path = os.path.join(self.prefix, "order-status.conf")
        self.conf_path = os.path.join(self.prefix, "nginx.conf")
        with open(self.site_path, "w") as site:
            site.write(site_config(service_ports, self.port))
        with open(self.conf_path, "w") as main:
            main.write(main_config(self.prefix, self.site_path))
        self.process = None

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}"

    def command(self, *extra):
        # -e: the error log before the configuration is read, which would otherwise be /var/log/nginx.
        return [self.binary, "-p", self.prefix, "-c", self.conf_path, "-e", os.path.join(self.prefix, "error.log"), *extra]

    def start(self):
        tested = subprocess.run(self.command("-t"), capture_output=True, text=True)
        check(tested.returncode == 0, f"nginx -t refused the configuration:\n{tested.stderr}")
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(f"nginx to answer on {self.base_url}", self._answers, timeout=15, interval=0.05)
        return self

    def _answers(self):
        if self.process.poll() is not None:
            raise CheckFailed(f"nginx exited with {self.process.returncode}:\n{self.log_tail('error.log')}")
        try:
            return request(self.base_url, "GET", "/healthz", timeout=2)[0] == 200
        except OSError:
            return False

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, name, lines=30):
        try:
            with open(os.path.join(self.prefix, name), errors="replace") as log_file:
                return "".join(log_file.readlines()[-lines:])
        except FileNotFoundError:
            return "(none)"

    def remove(self):
        shutil.rmtree(self.prefix, ignore_errors=True)


class EventStream:
    """An SSE response read block by block as it arrives (http.client undoes nginx's chunking)."""

    def __init__(self, base_url, order_id=None, last_event_id=None, path=None):
        port = int(base_url.rsplit(":", 1)[1])
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        # Like a browser: it accepts gzip, and the stream must still come uncompressed, at once.
        headers = {"Accept": "text/event-stream", "Accept-Encoding": "gzip, deflate"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.connection.request("GET", path or f"/events/order-status/{order_id}", headers=headers)
        self.response = self.connection.getresponse()
        self.buffer = b""

    def next_block(self, timeout=10.0):
        """The next block (up to a blank line) and when it arrived; None when the stream ended."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CheckFailed(f"no SSE block within {timeout:g} s (have {self.buffer!r})")
            self.connection.sock.settimeout(remaining)
            chunk = self.response.read1(65536)
            if not chunk:
                return None
            self.buffer += chunk
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        return block.decode(), time.perf_counter()

    def next_event(self, timeout=10.0, name="order-status"):
        """The next event named `name` as (its JSON, arrival time), skipping retry, heartbeats and other events."""
        while True:
            item = self.next_block(timeout)
            check(item is not None, "the stream ended before the expected event")
            block, arrived = item
            lines = block.split("\n")
            if f"event: {name}" not in lines:
                continue
            for line in lines:
                if line.startswith("data: "):
                    return json.loads(line[len("data: "):]), arrived

    def close(self):
        self.connection.close()


def check_feed(nginx_url, service_url):
    """The feed through nginx: a 100-id request line, a live filtered stream, and a held feed poll."""
    orders = [f"nginx-feed-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    for order_id in orders:
        post_json(nginx_url, "/orders", {"id": order_id}, 201)
    # 100 distinct ids of 64 characters, repeated (duplicates count once): a 16 KiB request target.
    wide = "&".join(f"order=x{index % 100:02d}{'y' * 61}" for index in range(231))
    status, headers, body = request(nginx_url, "GET", f"/poll/order-status?{wide}")
    check(status == 404 and headers.get("content-type") == "application/problem+json",
          f"a feed of 100 ids of 64 characters in a {len(wide)}-byte query through nginx answered {status}: {body[:200]!r}")
    query = "&".join(f"order={order_id}" for order_id in orders)
    stream = EventStream(nginx_url, path=f"/events/order-status?{query}")
    try:
        check(stream.response.status == 200, f"the feed through nginx answered {stream.response.status}")
        first = [stream.next_event()[0]["orderId"] for _ in orders]
        check(first == orders, f"the feed's first events are the latest of each order: {first}")
        caught_up, _ = stream.next_event(name="caught-up")
        sent = time.perf_counter()
        post_json(nginx_url, f"/orders/{orders[1]}/status", {"status": "paid"}, 200)
        event, arrived = stream.next_event(timeout=5)
        check(event["orderId"] == orders[1] and event["status"] == "paid", f"the feed's live event: {event}")
    finally:
        stream.close()
    status, _, body = request(nginx_url, "GET", f"/poll/order-status?{query}&after={caught_up['cursor']}&timeout=0")
    at_once = json.loads(body)
    check(status == 200 and [event["status"] for event in at_once["events"]] == ["paid"] and at_once["upToDate"] is True,
          f"the feed poll after caught-up answered {status}: {body[:300]!r}")
    answer = {}

    def hold():
        answer["result"] = request(nginx_url, "GET", f"/poll/order-status?{query}&after={at_once['cursor']}&timeout=30", timeout=40)

    poller = threading.Thread(target=hold)
    poller.start()
    wait_until("the feed poll to be held by the service", lambda: metric(service_url, "order_status_held_polls") >= 1)
    post_json(nginx_url, f"/orders/{orders[0]}/status", {"status": "cancelled"}, 200)
    poller.join(timeout=10)
    check("result" in answer, "the held feed poll was not answered within 10 s of the change")
    status, _, body = answer["result"]
    poll = json.loads(body)
    check(status == 200 and [event["status"] for event in poll["events"]] == ["cancelled"] and poll["upToDate"] is True,
          f"the held feed poll answered {status}: {body[:300]!r}")
    log(f"feed through nginx: a {len(wide) // 1024} KiB request target, live event in {(arrived - sent) * 1000:.1f} ms, a held feed poll answered")


def check_rest(nginx_url):
    order_id = f"nginx-{uuid.uuid4().hex[:10]}"
    status, headers, body = request(nginx_url, "POST", "/orders", {"id": order_id, "metadata": {"via": "nginx"}},
                                    {"Content-Type": "application/json", "X-Request-Id": "nginx-test-create"})
    check(status == 201, f"POST /orders through nginx answered {status}: {body[:200]!r}")
    check(headers.get("location") == f"/orders/{order_id}", f"Location is {headers.get('location')}")
    check(headers.get("x-request-id") == "nginx-test-create", f"X-Request-Id came back as {headers.get('x-request-id')}")
    status, headers, body = request(nginx_url, "GET", f"/orders/{order_id}")
    check(status == 200 and json.loads(body)["status"] == "pending", f"GET /orders/{order_id} answered {status}: {body[:200]!r}")
    check(re.fullmatch(r"[0-9a-f]{32}", headers.get("x-request-id", "")) is not None,
          f"without one, nginx should make an X-Request-Id; got {headers.get('x-request-id')}")
    status, headers, body = request(nginx_url, "GET", "/orders/no-such-order-here")
    check(status == 404 and headers.get("content-type") == "application/problem+json", f"unknown order: {status} {headers.get('content-type')}")
    status, headers, _ = request(nginx_url, "GET", "/")
    check(status == 200 and headers.get("content-type", "").startswith("text/html"), f"GET / answered {status}")
    log("REST through nginx: create 201, read 200, unknown 404 problem+json, the page 200; X-Request-Id passed back or made")
    return order_id


def check_stream(nginx_url, order_id):
    stream = EventStream(nginx_url, order_id)
    try:
        check(stream.response.status == 200, f"the stream answered {stream.response.status}")
        check(stream.response.getheader("content-type") == "text/event-stream", f"stream type {stream.response.getheader('content-type')}")
        check(stream.response.getheader("content-encoding") is None, f"the stream came {stream.response.getheader('content-encoding')}-encoded")
        first, _ = stream.next_event()
        check(first["status"] == "pending", f"the stream opened with {first['status']}")

        delays = []
        for status in ("paid", "processing", "shipped"):
            sent = time.perf_counter()
            post_json(nginx_url, f"/orders/{order_id}/status", {"status": status}, 200)
            event, arrived = stream.next_event(timeout=5)
            check(event["status"] == status, f"expected {status}, the stream sent {event['status']}")
            delays.append(arrived - sent)
            log(f"SSE through nginx: POST {status} -> event received in {delays[-1] * 1000:.1f} ms")
        check(max(delays) < DELIVERY_LIMIT_SECONDS, f"an event took {max(delays) * 1000:.0f} ms through nginx (limit {DELIVERY_LIMIT_SECONDS * 1000:.0f} ms)")

        # With HEARTBEAT_SECONDS=1 a quiet stream carries a comment every second; nginx must pass each at once.
        heartbeats = []
        quiet_since = time.perf_counter()
        while len(heartbeats) < 3:
            item = stream.next_block(timeout=3)
            check(item is not None, "the stream ended while waiting for heartbeats")
            block, arrived = item
            check(block == ": heartbeat", f"expected a heartbeat, got {block!r}")
            heartbeats.append(arrived)
        gaps = [later - earlier for earlier, later in zip([quiet_since] + heartbeats, heartbeats)]
        check(all(gap < 2.0 for gap in gaps), f"heartbeats came {', '.join(f'{g:.2f}' for g in gaps)} s apart; expected about 1 s")
        log(f"heartbeats through nginx: 3 received, {', '.join(f'{g:.2f}' for g in gaps)} s apart")
        return first["id"]
    finally:
        stream.close()


def check_resume(nginx_url, order_id, first_event_id):
    stream = EventStream(nginx_url, order_id, last_event_id=first_event_id)
    try:
        replayed = [stream.next_event()[0]["status"] for _ in range(3)]
        check(replayed == ["paid", "processing", "shipped"], f"Last-Event-ID {first_event_id} replayed {replayed}")
        log(f"Last-Event-ID through nginx: replayed {replayed}")
    finally:
        stream.close()


def check_long_poll(nginx_url, service_url, order_id):
    _, _, body = request(nginx_url, "GET", f"/orders/{order_id}/status/poll")
    after = json.loads(body)["lastEventId"]
    answer = {}

    def hold():
        answer["result"] = request(nginx_url, "GET", f"/orders/{order_id}/status/poll?after={after}&timeout=30", timeout=40)
        answer["at"] = time.perf_counter()

    poller = threading.Thread(target=hold)
    poller.start()
    wait_until("the poll to be held by the service", lambda: metric(service_url, "order_status_held_polls") >= 1)
    check("result" not in answer, "the poll answered before any change")
    sent = time.perf_counter()
    post_json(nginx_url, f"/orders/{order_id}/status", {"status": "delivered"}, 200)
    poller.join(timeout=10)
    check("result" in answer, "the held poll was not answered within 10 s of the change")
    status, _, body = answer["result"]
    poll = json.loads(body)
    check(status == 200 and [event["status"] for event in poll["events"]] == ["delivered"] and poll["terminal"],
          f"the held poll answered {status}: {body[:300]!r}")
    log(f"long poll through nginx: held, answered by the change in {(answer['at'] - sent) * 1000:.1f} ms, terminal")


def check_terminal_stream_ends(nginx_url, order_id):
    # Without a Last-Event-ID the stream sends the terminal event and ends; nginx must close too.
    stream = EventStream(nginx_url, order_id)
    try:
        event, _ = stream.next_event()
        check(event["terminal"], f"expected the terminal event, got {event['status']}")
        check(stream.next_block(timeout=5) is None, "the stream stayed open after the terminal event")
        log("terminal order through nginx: the terminal event, then the end of the stream")
    finally:
        stream.close()


def check_two_instances(first, second):
    """deploy/two-instances: streams spread by nginx over both instances all get a change, whichever
    instance committed it, because each instance LISTENs to the shared database itself."""
    nginx = Nginx([first.port, second.port]).start()
    streams = []
    try:
        order_id = f"pair-{uuid.uuid4().hex[:10]}"
        post_json(nginx.base_url, "/orders", {"id": order_id}, 201)
        for _ in range(4):
            streams.append(EventStream(nginx.base_url, order_id))
            streams[-1].next_event()
        held = wait_until("both instances to hold some of the streams", lambda: (lambda a, b: (a, b) if a >= 1 and b >= 1 else None)(
            metric(first.base_url, "order_status_open_streams"), metric(second.base_url, "order_status_open_streams")))
        for status, via in (("paid", first), ("shipped", second)):
            sent = time.perf_counter()
            post_json(via.base_url, f"/orders/{order_id}/status", {"status": status}, 200)
            arrivals = []
            for stream in streams:
                event, arrived = stream.next_event(timeout=5)
                check(event["status"] == status, f"a stream got {event['status']}, not {status}")
                arrivals.append(arrived - sent)
            log(f"two instances: {status} committed on {via.name} reached all {len(streams)} streams "
                f"({held[0]:.0f} on one instance, {held[1]:.0f} on the other) within {max(arrivals) * 1000:.1f} ms")
    finally:
        for stream in streams:
            stream.close()
        nginx.stop()
        nginx.remove()


def main():
    service = ServiceProcess(settings={"HEARTBEAT_SECONDS": "1"}, name="order-status")
    second = ServiceProcess(name="order-status-second")
    nginx = None
    try:
        service.start()
        nginx = Nginx([service.port]).start()
        version = subprocess.run([nginx.binary, "-v"], capture_output=True, text=True).stderr.strip()
        log(f"{version} on {nginx.base_url} -> order-status on {service.base_url} (config from deploy/nginx.conf in {nginx.prefix})")
        order_id = check_rest(nginx.base_url)
        first_event_id = check_stream(nginx.base_url, order_id)
        check_resume(nginx.base_url, order_id, first_event_id)
        check_long_poll(nginx.base_url, service.base_url, order_id)
        check_terminal_stream_ends(nginx.base_url, order_id)
        check_feed(nginx.base_url, service.base_url)
        second.start()
        check_two_instances(service, second)
        log("passed")
        return 0
    except CheckFailed as failure:
        log(f"FAILED: {failure}")
        for running in (service, second):
            log(f"--- {running.name} log ---\n{running.log_tail()}")
        if nginx is not None:
            log(f"--- nginx error.log ---\n{nginx.log_tail('error.log')}")
            log(f"--- nginx access.log ---\n{nginx.log_tail('access.log')}")
        return 1
    finally:
        if nginx is not None:
            nginx.stop()
            nginx.remove()
        for running in (service, second):
            running.stop()
            running.remove_log()


if __name__ == "__main__":
    sys.exit(main())
