"""Four order-status instances on one database behind Debian's HAProxy, configured by
deploy/four-instances/haproxy.cfg (only its ports and socket path substituted). Run through
scripts/balancer-test.sh. One asyncio process holds every client, each EventSource-like: it honours
the `retry:` the service sends and reconnects through HAProxy with Last-Event-ID (a feed: its cursor).
  1. 2,000 order streams spread by HAProxy over the four (each instance's /metrics shows its share),
     plus feeds of every order, feeds of 20 orders and long polls; a change committed on each
     instance directly reaches every client on every instance (POST-to-receipt p50/p99 printed).
  2. Reconnect storm: while writers POST through HAProxy, the instance holding about a quarter of
     the streams gets SIGKILL; its clients resume on the other three. Printed: time from the kill
     until each is live again (p50, p99, max) and what it cost PostgreSQL (pg_stat_database: new
     sessions, transactions, rows read) against an equal window just before the kill.
  3. Rolling restart under writes: SIGTERM to each instance in turn, back ready before the next.
     No writer's POST and no client's reconnect may get an error response.
Finally every order goes terminal and each client's events are compared with order_events: every
event of its order (or, for a feed, of each order in it) exactly once and in order; the feeds of
every order all hold the same sequence."""

import asyncio
import datetime
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

from live_service import ROOT, CheckFailed, ServiceProcess, check, database_url, free_port, metric, say

SCRIPT = "balancer-test"
HAPROXY_CFG = os.path.join(ROOT, "deploy", "four-instances", "haproxy.cfg")
EXAMPLE_PORTS = (8081, 8082, 8083, 8084)
STREAMS = int(os.environ.get("BALANCER_STREAMS", "2000"))
ORDERS = STREAMS // 5
FEEDS_OF_EVERY_ORDER = 4
ORDERS_PER_FEED = 20
POLLS = 40
WRITERS = 8
# The instances' settings: a short drain keeps the rolling restart brief. The unready pause must
# exceed the config's health check (inter 1s + fastinter 250ms for fall 2); see its README.
INSTANCE_SETTINGS = {"SHUTDOWN_SPREAD_SECONDS": "2", "SHUTDOWN_UNREADY_SECONDS": "2", "SHUTDOWN_TIMEOUT_SECONDS": "10"}
# The pg_stat_database windows compared around the kill.
COST_WINDOW_SECONDS = 6.0


def log(line):
    say(SCRIPT, line)


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def milliseconds(seconds):
    return f"{seconds * 1000:.0f} ms"


# MARK: HAProxy


def haproxy_config(service_ports, port, socket_path, log_path):
    """The committed file with the test's ports and paths: the substitutions a deployment makes."""
    with open(HAPROXY_CFG) as committed:
        text = committed.read()
    text, binds = re.subn(r"(?m)^(\s*bind\s+):80$", rf"\g<1>127.0.0.1:{port}", text)
    check(binds == 1, f"{HAPROXY_CFG} must hold one `bind :80` line (found {binds})")
    for example, actual in zip(EXAMPLE_PORTS, service_ports):
        text, found = re.subn(rf"127\.0\.0\.1:{example}\b", f"127.0.0.1:{actual}", text)
        check(found == 1, f"{HAPROXY_CFG} must name 127.0.0.1:{example} once (found {found})")
    text, sockets = re.subn(r"/run/haproxy/order-status\.sock", socket_path, text)
    check(sockets == 1, f"{HAPROXY_CFG} must hold one stats socket /run/haproxy/order-status.sock (found {sockets})")
    text, logs = re.subn(r"(?m)^(\s*log\s+)/dev/log\b", rf"\g<1>{log_path}", text)
    check(logs == 1, f"{HAPROXY_CFG} must hold one `log /dev/log` line (found {logs})")
    return text


class HAProxy:
    def __init__(self, service_ports):
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="order-status-haproxy.")
        self.socket_path = os.path.join(self.directory, "admin.sock")
        self.config_path = os.path.join(self.directory, "haproxy.cfg")
        self.log_path = os.path.join(self.directory, "haproxy.log")
        # The syslog socket HAProxy logs each request to (the config's /dev/log), read into access.log.
        self.syslog_path = os.path.join(self.directory, "syslog.sock")
        self.access_log_path = os.path.join(self.directory, "access.log")
        self.binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        with open(self.config_path, "w") as config:
            config.write(haproxy_config(service_ports, self.port, self.socket_path, self.syslog_path))
        self.syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.syslog.bind(self.syslog_path)
        self.syslog_reader = threading.Thread(target=self._read_syslog, daemon=True)
        self.syslog_reader.start()
        self.process = None

    def _read_syslog(self):
        with open(self.access_log_path, "ab", buffering=0) as access:
            while True:
                try:
                    message = self.syslog.recv(65536)
                except OSError:
                    return
                access.write(message.rstrip(b"\n") + b"\n")

    def responses_of_status(self, prefix="5"):
        """HTTP log lines whose status starts with `prefix`; the status follows the timers field."""
        try:
            with open(self.access_log_path, errors="replace") as access:
                pattern = re.compile(rf" {prefix}\d{{{3 - len(prefix)}}} \d+ - - ")
                return [line for line in access if pattern.search(line)]
        except FileNotFoundError:
            return []

    def stream_head_times(self, since, until):
        """From HAProxy's log: for order streams accepted between the wall-clock times `since` and
        `until`, each one's Tr, the milliseconds the instance took to send the response head."""
        line_pattern = re.compile(r"\[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] \S+ \S+ -?\d+/-?\d+/-?\d+/(-?\d+)/-?\d+ 200 .*\"GET /events/order-status/")
        times = []
        try:
            with open(self.access_log_path, errors="replace") as access:
                for line in access:
                    found = line_pattern.search(line)
                    if found:
                        accepted = datetime.datetime.strptime(found.group(1), "%d/%b/%Y:%H:%M:%S.%f").timestamp()
                        if since <= accepted <= until and int(found.group(2)) >= 0:
                            times.append(int(found.group(2)) / 1000)
        except FileNotFoundError:
            pass
        return times

    def start(self):
        checked = subprocess.run([self.binary, "-c", "-f", self.config_path], capture_output=True, text=True)
        check(checked.returncode == 0, f"haproxy -c refused the configuration:\n{checked.stdout}{checked.stderr}")
        with open(self.log_path, "w") as output:
            # -db: in the foreground, not a daemon, so the test owns the process.
            self.process = subprocess.Popen([self.binary, "-db", "-f", self.config_path], stdout=output, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        return self

    def servers(self):
        """Each server's state (UP, DOWN, MAINT, ...) from the stats socket's `show stat`."""
        if self.process.poll() is not None:
            raise CheckFailed(f"haproxy exited with {self.process.returncode}:\n{self.log_tail()}")
        try:
            with socket.socket(socket.AF_UNIX) as connection:
                connection.settimeout(5)
                connection.connect(self.socket_path)
                connection.sendall(b"show stat\n")
                data = b""
                while chunk := connection.recv(65536):
                    data += chunk
        except OSError:
            return {}
        lines = data.decode().splitlines()
        if not lines or not lines[0].startswith("# "):
            return {}
        header = lines[0][2:].split(",")
        states = {}
        for line in lines[1:]:
            row = dict(zip(header, line.split(",")))
            if row.get("pxname") == "order_status" and row.get("svname") not in ("FRONTEND", "BACKEND", None):
                states[row["svname"]] = row["status"].split(" ")[0]
        return states

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self, lines=30):
        try:
            with open(self.log_path, errors="replace") as output:
                return "".join(output.readlines()[-lines:])
        except FileNotFoundError:
            return "(none)"

    def remove(self):
        self.syslog.close()
        shutil.rmtree(self.directory, ignore_errors=True)


# MARK: HTTP/1.1 on asyncio


async def open_exchange(port, method, path, headers=None, body=None, timeout=10.0):
    """Sends one request on a fresh connection; returns (status, lowercase headers, reader, writer)
    once the response head is in."""
    data = json.dumps(body).encode() if body is not None else b""
    head = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    head += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body is not None:
        head += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    # Connected and written in one step, as a browser does: on a loaded machine an event loop that
    # comes back late to a finished connect would leave HAProxy an empty connection past its
    # `timeout http-request` (408). On loopback both calls return at once.
    connection = socket.socket()
    try:
        connection.settimeout(timeout)
        connection.connect(("127.0.0.1", port))
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        connection.setblocking(False)
    except BaseException:
        connection.close()
        raise
    reader, writer = await asyncio.open_connection(sock=connection)
    try:
        status_line = await asyncio.wait_for(reader.readline(), timeout)
        if not status_line:
            raise ConnectionResetError("the connection closed before a response")
        status = int(status_line.split()[1])
        fields = {}
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            fields[name.strip().lower()] = value.strip()
        return status, fields, reader, writer
    except BaseException:
        writer.close()
        raise


async def body_chunks(reader, fields):
    """The response body as it arrives, with chunked transfer coding undone; IncompleteReadError
    when the connection breaks inside a chunk."""
    if fields.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise asyncio.IncompleteReadError(b"", None)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return
            chunk = await reader.readexactly(size)
            await reader.readexactly(2)
            yield chunk
    elif "content-length" in fields:
        length = int(fields["content-length"])
        if length:
            yield await reader.readexactly(length)
    else:
        while chunk := await reader.read(65536):
            yield chunk


async def exchange(port, method, path, body=None, timeout=30.0):
    """One whole request and response: (status, body bytes)."""
    status, fields, reader, writer = await open_exchange(port, method, path, body=body, timeout=timeout)
    try:
        data = b""
        async for chunk in body_chunks(reader, fields):
            data += chunk
        return status, data
    finally:
        writer.close()


def sse_blocks(buffer):
    """Splits complete SSE blocks off `buffer`: ([{field: value}...], the rest)."""
    blocks = []
    while b"\n\n" in buffer:
        raw, buffer = buffer.split(b"\n\n", 1)
        block = {}
        for line in raw.decode().split("\n"):
            if line.startswith(":"):
                block.setdefault("comment", line)
                continue
            name, _, value = line.partition(":")
            block[name] = value[1:] if value.startswith(" ") else value
        blocks.append(block)
    return blocks, buffer


# MARK: clients


class Client:
    """What every client records: events in arrival order, error responses, drops and the moments
    it was live (a stream's 200 head, a feed's caught-up)."""

    def __init__(self, label):
        self.label = label
        self.events = []
        self.errors = []
        self.drops = []
        self.lives = []
        self.finished = False
        self.retry_seconds = 3.0

    def live_after(self, moment):
        return next((live for live in self.lives if live > moment), None)


class StreamClient(Client):
    """`GET /events/order-status/{id}` (or a feed), EventSource-like."""

    def __init__(self, port, path, label, feed_orders=None):
        super().__init__(label)
        self.port = port
        self.path = path
        self.last_event_id = None
        # A feed of listed orders is over once each has sent its terminal event; None: every order.
        self.feed_orders = feed_orders
        self.terminal_seen = set()
        self.is_feed = path.startswith("/events/order-status?") or path == "/events/order-status"

    async def run(self):
        while not self.finished:
            headers = {"Accept": "text/event-stream"}
            if self.last_event_id is not None:
                headers["Last-Event-ID"] = self.last_event_id
            try:
                status, fields, reader, writer = await open_exchange(self.port, "GET", self.path, headers)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as failure:
                self.drops.append((time.monotonic(), f"connect: {failure!r}"))
                await asyncio.sleep(self.retry_seconds)
                continue
            try:
                if status == 204:
                    self.finished = True
                    break
                if status != 200:
                    body = b"".join([chunk async for chunk in body_chunks(reader, fields)])
                    self.errors.append((time.monotonic(), f"{status} {body[:200]!r}"))
                else:
                    if not self.is_feed:
                        self.lives.append(time.monotonic())
                    await self.read_stream(reader, fields)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                pass
            finally:
                writer.close()
            if not self.finished:
                self.drops.append((time.monotonic(), "ended"))
                await asyncio.sleep(self.retry_seconds)

    async def read_stream(self, reader, fields):
        buffer = b""
        async for chunk in body_chunks(reader, fields):
            buffer += chunk
            blocks, buffer = sse_blocks(buffer)
            for block in blocks:
                if "retry" in block:
                    self.retry_seconds = int(block["retry"]) / 1000
                if block.get("event") == "caught-up":
                    self.last_event_id = block["id"]
                    self.lives.append(time.monotonic())
                elif block.get("event") == "order-status":
                    event = json.loads(block["data"])
                    self.last_event_id = block["id"]
                    self.events.append((event["orderId"], event["id"], event["status"], time.monotonic()))
                    if event["terminal"]:
                        self.terminal_seen.add(event["orderId"])
                        if not self.is_feed or (self.feed_orders is not None and self.terminal_seen >= set(self.feed_orders)):
                            self.finished = True


class PollClient(Client):
    """`GET /orders/{id}/status/poll?after=N` in a loop, from the first event to the terminal one."""

    def __init__(self, port, order_id):
        super().__init__(f"poll {order_id}")
        self.port = port
        self.order_id = order_id

    async def run(self):
        after = 0
        while not self.finished:
            try:
                status, data = await exchange(self.port, "GET", f"/orders/{self.order_id}/status/poll?after={after}&timeout=20", timeout=40)
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as failure:
                self.drops.append((time.monotonic(), repr(failure)))
                await asyncio.sleep(1)
                continue
            if status != 200:
                self.errors.append((time.monotonic(), f"{status} {data[:200]!r}"))
                await asyncio.sleep(1)
                continue
            poll = json.loads(data)
            for event in poll["events"]:
                self.events.append((event["orderId"], event["id"], event["status"], time.monotonic()))
            after = poll["lastEventId"]
            self.finished = poll["terminal"]


class Writers:
    """POSTs status changes; every answer that is not 2xx (or no answer) is kept, by phase."""

    def __init__(self, port):
        self.port = port
        self.errors = []
        self.posted = 0
        self.answered_at = {}
        # (when the 2xx came, how long the POST took) for every successful POST
        self.completions = []

    async def change(self, order_id, status, port=None, phase=""):
        for _ in range(30):
            started = time.monotonic()
            try:
                answer, data = await exchange(port or self.port, "POST", f"/orders/{order_id}/status", {"status": status})
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as failure:
                self.errors.append((phase, f"POST {order_id} {status}: {failure!r}"))
            else:
                if answer == 200:
                    self.posted += 1
                    self.answered_at[(order_id, status)] = started
                    self.completions.append((time.monotonic(), time.monotonic() - started))
                    return
                self.errors.append((phase, f"POST {order_id} {status}: {answer} {data[:200]!r}"))
            await asyncio.sleep(0.2)
        raise CheckFailed(f"POST {order_id} {status} never succeeded: {self.errors[-3:]}")

    async def create(self, order_id, phase=""):
        started = time.monotonic()
        try:
            answer, data = await exchange(self.port, "POST", "/orders", {"id": order_id})
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError, IndexError) as failure:
            self.errors.append((phase, f"POST /orders {order_id}: {failure!r}"))
            return False
        if answer != 201:
            self.errors.append((phase, f"POST /orders {order_id}: {answer} {data[:200]!r}"))
            return False
        self.posted += 1
        self.completions.append((time.monotonic(), time.monotonic() - started))
        return True

    def completed_between(self, start, end):
        return sum(1 for moment, _ in self.completions if start < moment <= end)

    async def paced(self, changes, seconds, phase):
        """`changes` [(order, status)] spread evenly over about `seconds` by WRITERS at once."""
        gap = seconds * WRITERS / max(1, len(changes))

        async def writer(share):
            for order_id, status in share:
                await self.change(order_id, status, phase=phase)
                await asyncio.sleep(gap)

        await asyncio.gather(*(writer(changes[index::WRITERS]) for index in range(WRITERS)))


# MARK: the database


def psql(sql):
    binary = shutil.which("psql") or "/usr/lib/postgresql/15/bin/psql"
    result = subprocess.run([binary, database_url(), "-XAtq", "-c", sql], capture_output=True, text=True, timeout=30)
    check(result.returncode == 0, f"psql failed: {result.stderr}")
    return result.stdout


def database_counters():
    """This database's cumulative counters: new sessions, open backends, commits, rows read."""
    row = psql("SELECT sessions, numbackends, xact_commit, tup_returned + tup_fetched, blks_hit + blks_read "
               "FROM pg_stat_database WHERE datname = current_database()").strip().split("|")
    return dict(zip(("sessions", "backends", "commits", "rows", "blocks"), map(int, row)))


def table_events(prefix):
    """Every event of the test's orders from order_events: order id -> [event id...] ascending."""
    events = {}
    for line in psql(f"SELECT order_id, id FROM order_events WHERE order_id LIKE '{prefix}%' ORDER BY id").splitlines():
        order_id, event_id = line.split("|")
        events.setdefault(order_id, []).append(int(event_id))
    return events


# MARK: the scenario


async def until(what, condition, timeout=60.0, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise CheckFailed(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


class Scenario:
    def __init__(self):
        self.prefix = f"bal-{uuid.uuid4().hex[:8]}-"
        self.orders = [f"{self.prefix}{index:04d}" for index in range(ORDERS)]
        self.instances = [ServiceProcess(settings=INSTANCE_SETTINGS, name=f"order-status-{index + 1}") for index in range(4)]
        self.retired = []
        self.haproxy = None
        self.tasks = []
        self.streams = []
        self.feeds_of_every_order = []
        self.feeds_of_orders = []
        self.polls = []

    @property
    def clients(self):
        return self.streams + self.feeds_of_every_order + self.feeds_of_orders + self.polls

    async def open_metrics(self):
        return [await asyncio.to_thread(metric, instance.base_url, "order_status_open_streams") for instance in self.instances]

    async def wait_servers_up(self, timeout=30):
        deadline = time.monotonic() + timeout
        while True:
            # In a thread: the stats socket of a busy HAProxy may take a while, and the clients must go on.
            states = await asyncio.to_thread(self.haproxy.servers)
            if len(states) == 4 and all(state == "UP" for state in states.values()):
                return
            check(time.monotonic() < deadline, f"HAProxy did not see all four instances UP within {timeout} s: {states}")
            await asyncio.sleep(0.1)

    def spawn(self, client):
        self.tasks.append(asyncio.create_task(client.run()))
        return client

    async def start(self):
        await asyncio.gather(*(asyncio.to_thread(instance.start) for instance in self.instances))
        self.haproxy = HAProxy([instance.port for instance in self.instances]).start()
        await self.wait_servers_up()
        version = subprocess.run([self.haproxy.binary, "-v"], capture_output=True, text=True).stdout.splitlines()[0]
        log(f"{version} on 127.0.0.1:{self.haproxy.port} -> 4 instances on ports {', '.join(str(i.port) for i in self.instances)}"
            f" (config from deploy/four-instances/haproxy.cfg in {self.haproxy.directory})")

    async def open_clients(self):
        port = self.haproxy.port
        # The feeds of every order start before the orders, so each of them holds every event of the test.
        for index in range(FEEDS_OF_EVERY_ORDER):
            self.feeds_of_every_order.append(self.spawn(StreamClient(port, "/events/order-status", f"feed of every order #{index}")))
        await until("the feeds of every order to be caught up", lambda: all(feed.lives for feed in self.feeds_of_every_order))
        writers = Writers(port)
        creations = asyncio.Semaphore(20)

        async def create(order_id):
            async with creations:
                await writers.create(order_id, phase="setup")

        await asyncio.gather(*(create(order_id) for order_id in self.orders))
        check(not writers.errors, f"creating the orders: {writers.errors[:3]}")
        started = time.monotonic()
        for index in range(STREAMS):
            order_id = self.orders[index % ORDERS]
            self.streams.append(self.spawn(StreamClient(port, f"/events/order-status/{order_id}", f"stream {index} of {order_id}")))
            if index % 100 == 99:
                await until("the streams opened so far to get their first event", lambda: all(s.events for s in self.streams), timeout=60)
        for index in range(0, ORDERS, ORDERS_PER_FEED):
            listed = self.orders[index:index + ORDERS_PER_FEED]
            query = "&".join(f"order={order_id}" for order_id in listed)
            self.feeds_of_orders.append(self.spawn(StreamClient(port, f"/events/order-status?{query}", f"feed of {listed[0]}..", listed)))
        for index in range(POLLS):
            self.polls.append(self.spawn(PollClient(port, self.orders[(index * ORDERS) // POLLS])))
        await until("every client to be live", lambda: all(s.events for s in self.streams) and all(f.lives for f in self.feeds_of_orders)
                    and all(p.events for p in self.polls), timeout=60)
        held = await self.open_metrics()
        log(f"{STREAMS} streams, {len(self.feeds_of_orders)} feeds of {ORDERS_PER_FEED} orders, {FEEDS_OF_EVERY_ORDER} feeds of every "
            f"order and {POLLS} long polls open through HAProxy in {time.monotonic() - started:.1f} s; open streams per instance "
            f"(feeds included): {', '.join(f'{count:.0f}' for count in held)}")
        check(all(count >= STREAMS / 10 for count in held), f"HAProxy should spread the streams over all four instances: {held}")

    async def fanout(self):
        """Each order's first change is committed on one instance directly: instance k takes the
        orders k, k+4, ...; every client on every instance must get it."""
        writers = Writers(self.haproxy.port)
        semaphore = asyncio.Semaphore(WRITERS)

        async def paid(index, order_id):
            async with semaphore:
                await writers.change(order_id, "paid", port=self.instances[index % 4].port, phase="fanout")

        await asyncio.gather(*(paid(index, order_id) for index, order_id in enumerate(self.orders)))
        check(not writers.errors, f"fanout writes failed: {writers.errors[:3]}")
        await until("every stream to get its order's paid event", lambda: all(len(s.events) >= 2 for s in self.streams), timeout=60)
        delays = [arrived - writers.answered_at[(order_id, status)]
                  for stream in self.streams for order_id, _, status, arrived in stream.events if status == "paid"]
        log(f"fanout: {len(self.orders)} changes, each committed on one of the four instances directly, reached all {STREAMS} "
            f"streams; POST-to-receipt p50 {milliseconds(percentile(delays, 0.5))}, p99 {milliseconds(percentile(delays, 0.99))}, "
            f"max {milliseconds(max(delays))}")

    async def storm(self):
        writers = Writers(self.haproxy.port)
        total_write_seconds = 2 * COST_WINDOW_SECONDS + 6
        writing = asyncio.create_task(writers.paced([(order_id, "processing") for order_id in self.orders], total_write_seconds, "storm"))
        await asyncio.sleep(1.0)
        before = await asyncio.to_thread(database_counters)
        before_at = time.monotonic()
        await asyncio.sleep(COST_WINDOW_SECONDS)
        at_kill = await asyncio.to_thread(database_counters)
        at_kill_at = time.monotonic()
        held = await self.open_metrics()
        victim_index = min(range(4), key=lambda index: abs(held[index] - sum(held) / 4))
        victim = self.instances[victim_index]
        killed_at = time.monotonic()
        self.killed_wall = time.time()
        victim.process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(victim.process.wait)
        streams_on_victim = held[victim_index]

        def resumed():
            dropped = [client for client in self.clients if any(moment > killed_at for moment, _ in client.drops)]
            return dropped if len(dropped) >= streams_on_victim and all(client.live_after(killed_at) or client.finished for client in dropped) else None

        dropped = await until(f"the {streams_on_victim:.0f} clients of {victim.name} to be live again", resumed, timeout=60)
        live_again = [client.live_after(killed_at) - killed_at for client in dropped]
        noticed = [min(moment for moment, _ in client.drops if moment > killed_at) - killed_at for client in dropped]
        attempts = [sum(1 for moment, _ in client.drops if moment > killed_at) for client in dropped]
        log(f"storm: clients noticed the kill after p50 {milliseconds(percentile(noticed, 0.5))}, max {milliseconds(max(noticed))}; "
            f"connects per client until live: max {max(attempts)}; waited retry: p50 {percentile([c.retry_seconds for c in dropped], 0.5):.2f} s")
        check(max(live_again) < 30, f"the clients took up to {max(live_again):.1f} s to come back (limit 30 s)")
        # The window after the kill covers the whole recovery; the one before, scaled to its length, is the writes' own cost.
        window = max(COST_WINDOW_SECONDS, max(live_again) + 0.5)
        await asyncio.sleep(max(0.0, window - (time.monotonic() - killed_at)))
        after = await asyncio.to_thread(database_counters)
        after_at = time.monotonic()
        await writing
        storm_errors = [error for phase, error in writers.errors if phase == "storm"]
        client_errors = [(client.label, error) for client in self.clients for moment, error in client.errors if moment > killed_at]
        # What the writes cost per POST, from the window before the kill; the window from the kill
        # minus that many POSTs' worth is what the reconnects cost. Each psql snapshot is one session.
        posts_before = writers.completed_between(before_at, at_kill_at)
        posts_after = writers.completed_between(at_kill_at, after_at)
        cost = {name: round((after[name] - at_kill[name]) - (at_kill[name] - before[name]) * posts_after / max(1, posts_before))
                for name in ("commits", "rows", "blocks")}
        cost["sessions"] = after["sessions"] - at_kill["sessions"] - 1
        log(f"storm: SIGKILL to {victim.name}, holding {streams_on_victim:.0f} of {sum(held):.0f} streams, while {WRITERS} writers POST "
            f"through HAProxy; {len(dropped)} clients dropped, every one live again on the other three: from the kill p50 "
            f"{milliseconds(percentile(live_again, 0.5))}, p99 {milliseconds(percentile(live_again, 0.99))}, max {milliseconds(max(live_again))}")
        log(f"storm cost to PostgreSQL (pg_stat_database over the {window:.1f} s from the kill, less the cost of its {posts_after} POSTs "
            f"at the rate of the {posts_before} POSTs in the {COST_WINDOW_SECONDS:g} s before): {cost['sessions']} new sessions, "
            f"{cost['commits']} transactions, {cost['rows']} rows read, "
            f"{cost['blocks']} block reads; backends {at_kill['backends']} -> {after['backends']}; per resumed client "
            f"{cost['commits'] / len(dropped):.2f} transactions, {cost['rows'] / len(dropped):.1f} rows")
        log(f"storm: error responses to clients' reconnects: {len(client_errors)}" + (f" (first: {client_errors[0]})" if client_errors else "")
            + f"; writers' POSTs that failed and were retried: {len(storm_errors)}" + (f" (first: {storm_errors[0]})" if storm_errors else ""))
        # The killed instance comes back on its port, as systemd's Restart=on-failure would bring it.
        self.retired.append(victim)
        self.instances[victim_index] = ServiceProcess(port=victim.port, settings=INSTANCE_SETTINGS, name=victim.name)
        await asyncio.to_thread(self.instances[victim_index].start)
        await self.wait_servers_up()
        await until("every stream to get its order's processing event", lambda: all(len(s.events) >= 3 for s in self.streams), timeout=60)
        self.storm_figures = (percentile(live_again, 0.5), percentile(live_again, 0.99), max(live_again), cost, len(dropped))

    async def rolling_restart(self):
        writers = Writers(self.haproxy.port)
        errors_before = {id(client): len(client.errors) for client in self.clients}
        stop_creating = asyncio.Event()
        created = []

        async def keep_creating():
            # New orders while the instances restart: their creations reach the feeds of every order.
            while not stop_creating.is_set():
                order_id = f"{self.prefix}x{len(created):05d}"
                await writers.create(order_id, phase="rolling")
                created.append(order_id)
                await asyncio.sleep(0.1)

        creating = asyncio.create_task(keep_creating())
        writing = asyncio.create_task(writers.paced([(order_id, "shipped") for order_id in self.orders], 30, "rolling"))
        started = time.monotonic()
        reconnects_before = sum(len(client.drops) for client in self.clients)
        balancer_errors_before = len(self.haproxy.responses_of_status("5"))
        for index in range(4):
            instance = self.instances[index]
            terminated = time.monotonic()
            instance.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(instance.process.wait, 20)
            check(code == 0, f"{instance.name} exited with {code} after SIGTERM:\n{instance.log_tail()}")
            stopped = time.monotonic() - terminated
            self.retired.append(instance)
            self.instances[index] = ServiceProcess(port=instance.port, settings=INSTANCE_SETTINGS, name=instance.name)
            await asyncio.to_thread(self.instances[index].start)
            await self.wait_servers_up()
            log(f"rolling restart: {instance.name} drained and exited in {stopped:.1f} s, back and UP in HAProxy "
                f"{time.monotonic() - terminated:.1f} s after its SIGTERM")
        stop_creating.set()
        await creating
        await writing
        duration = time.monotonic() - started
        reconnects = sum(len(client.drops) for client in self.clients) - reconnects_before
        client_errors = [(client.label, error) for client in self.clients for _, error in client.errors[errors_before[id(client)]:]]
        writer_errors = [error for _, error in writers.errors]
        check(not writer_errors, f"{len(writer_errors)} writer POSTs got an error during the rolling restart: {writer_errors[:5]}")
        check(not client_errors, f"{len(client_errors)} client (re)connects got an error response during the rolling restart: {client_errors[:5]}")
        balancer_errors = self.haproxy.responses_of_status("5")[balancer_errors_before:]
        check(not balancer_errors, f"HAProxy logged {len(balancer_errors)} 5xx answers during the rolling restart: {balancer_errors[:3]}")
        latencies = [took for _, took in writers.completions]
        log(f"rolling restart of all four under writes in {duration:.1f} s: {writers.posted} POSTs ({len(created)} creations; "
            f"latency p50 {milliseconds(percentile(latencies, 0.5))}, p99 {milliseconds(percentile(latencies, 0.99))}), "
            f"{reconnects} client reconnects, no error response to any of them")
        self.rolling_figures = (duration, writers.posted, reconnects)

    async def finish(self):
        writers = Writers(self.haproxy.port)
        await writers.paced([(order_id, "delivered") for order_id in self.orders], 3, "final")
        check(not writers.errors, f"final writes failed: {writers.errors[:3]}")
        finite = self.streams + self.feeds_of_orders + self.polls
        await until("every stream, feed of orders and poll to reach its terminal event", lambda: all(c.finished for c in finite), timeout=60)
        expected = table_events(self.prefix)
        total = sum(len(ids) for ids in expected.values())
        await until("the feeds of every order to hold every event of the test",
                    lambda: all(len(feed.events) >= total for feed in self.feeds_of_every_order), timeout=60)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return expected, total

    def verify(self, expected, total):
        wrong = []
        for client in self.streams + self.polls:
            order_id = client.events[0][0]
            received = [event_id for _, event_id, _, _ in client.events]
            if received != expected[order_id]:
                wrong.append(f"{client.label}: received {received}, order_events has {expected[order_id]}")
        for feed in self.feeds_of_orders + self.feeds_of_every_order:
            by_order = {}
            for order_id, event_id, _, _ in feed.events:
                by_order.setdefault(order_id, []).append(event_id)
            orders = feed.feed_orders if feed.feed_orders is not None else list(expected)
            for order_id in orders:
                if by_order.get(order_id, []) != expected[order_id]:
                    wrong.append(f"{feed.label}, order {order_id}: received {by_order.get(order_id)}, order_events has {expected[order_id]}")
            extra = set(by_order) - set(orders)
            if extra:
                wrong.append(f"{feed.label}: events of orders it does not list: {sorted(extra)[:3]}")
        sequences = {tuple(event_id for _, event_id, _, _ in feed.events) for feed in self.feeds_of_every_order}
        if len(sequences) != 1:
            wrong.append("the feeds of every order do not hold one and the same sequence")
        check(not wrong, f"{len(wrong)} clients did not get exactly their events in order; first: {wrong[:3]}")
        log(f"exactly once, in order: {len(self.streams)} streams, {len(self.polls)} polls, {len(self.feeds_of_orders)} feeds of orders "
            f"and {len(self.feeds_of_every_order)} feeds of every order (one sequence of {total} events) match order_events")

    async def watch_lag(self):
        """The event loop's worst lateness: on a loaded machine the clients' own timings include it."""
        while True:
            planned = time.monotonic() + 0.1
            await asyncio.sleep(0.1)
            self.worst_lag = max(self.worst_lag, time.monotonic() - planned)

    async def run(self):
        self.worst_lag = 0.0
        self.tasks.append(asyncio.create_task(self.watch_lag()))
        await self.start()
        await self.open_clients()
        quiet_from = time.monotonic()
        await self.fanout()
        quiet = [client.label for client in self.clients if any(moment > quiet_from for moment, _ in client.drops)]
        check(not quiet, f"{len(quiet)} clients dropped with no instance stopping: {quiet[:3]}")
        await self.storm()
        await self.rolling_restart()
        quiet_from = time.monotonic()
        expected, total = await self.finish()
        quiet = [client.label for client in self.clients if any(moment > quiet_from for moment, _ in client.drops)]
        check(not quiet, f"{len(quiet)} clients dropped after the rolling restart: {quiet[:3]}")
        self.verify(expected, total)
        heads = self.haproxy.stream_head_times(self.killed_wall, self.killed_wall + self.storm_figures[2] + 0.5)
        if heads:
            log(f"storm, from HAProxy's log: the {len(heads)} stream reconnects after the kill waited for their response head "
                f"(the instance's replay read) p50 {milliseconds(percentile(heads, 0.5))}, p99 {milliseconds(percentile(heads, 0.99))}")

    def cleanup(self, failed):
        for task in self.tasks:
            task.cancel()
        if failed:
            for instance in self.instances + self.retired:
                log(f"--- {instance.name} (port {instance.port}) log ---\n{instance.log_tail(15)}")
            if self.haproxy is not None:
                log(f"--- haproxy ---\n{self.haproxy.log_tail()}")
                log("--- haproxy's 5xx and 408 answers (last 10) ---\n"
                    + "".join((self.haproxy.responses_of_status("5") + self.haproxy.responses_of_status("408"))[-10:]))
        if self.haproxy is not None:
            self.haproxy.stop()
            self.haproxy.remove()
        for instance in self.instances + self.retired:
            instance.stop()
            instance.remove_log()


def raise_descriptor_limit():
    """Every client holds a socket; the instances and HAProxy, started from here, inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(65536, hard)
    if soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard) if hard != resource.RLIM_INFINITY else hard))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    check(soft >= STREAMS + 500, f"the descriptor limit {soft} is too low for {STREAMS} streams")


def main():
    scenario = None
    failed = True
    started = time.monotonic()
    try:
        raise_descriptor_limit()
        scenario = Scenario()
        asyncio.run(scenario.run())
        failed = False
        log(f"run time {time.monotonic() - started:.0f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
            f"the clients' event loop ran up to {milliseconds(scenario.worst_lag)} late")
        log("passed")
        return 0
    except CheckFailed as failure:
        log(f"FAILED: {failure}")
        return 1
    except Exception:
        log(f"FAILED: the test itself broke:\n{traceback.format_exc()}")
        return 1
    finally:
        if scenario is not None:
            scenario.cleanup(failed)


if __name__ == "__main__":
    sys.exit(main())
