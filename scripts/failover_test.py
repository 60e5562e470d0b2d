"""A PostgreSQL that fails over: the service reaching a Patroni cluster through HAProxy, configured
by the committed files in deploy/patroni/ (only ports and paths substituted). Run through
scripts/failover-test.sh. It starts its own etcd, two Patroni nodes (PostgreSQL 15, as the postgres
user) with synchronous_mode, HAProxy and two service instances, all on free ports under one temp
dir, and ignores DATABASE_URL.

While writers POST at a steady rate and a few dozen EventSource-like order streams and two feeds
are open, the primary node dies: its Patroni and then its postmaster get SIGKILL (Patroni alone
would restart a killed postmaster while it holds the leader key). Checks:
  - Patroni promotes the synchronous standby;
  - /readyz of each instance answers 503 while there is no primary and 200 after, without a restart;
  - every change that got a 2xx is in the event table of the new primary;
  - every stream got its order's events from that table exactly once, in order, and each feed
    every event committed after it opened, exactly once, in feed order;
  - every failed POST got a 503 problem+json within DATABASE_TIMEOUT_SECONDS (plus a margin):
    no hang, no 500.
Printed: time without a primary, time until delivery resumes, POSTs failed."""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

from live_service import ROOT, CheckFailed, ServiceProcess, check, free_port, metric, request, say, wait_until

SCRIPT = "failover-test"
DEPLOY = os.path.join(ROOT, "deploy", "patroni")
PG_BIN = "/usr/lib/postgresql/15/bin"
# The committed example credentials (deploy/patroni/post-bootstrap.sh and node*.yml).
SERVICE_ROLE, SERVICE_PASSWORD, SERVICE_DATABASE = "order_status", "order-status-example", "order_status"
DATABASE_TIMEOUT_SECONDS = 2
# A failed POST must be answered within the database bound plus this (HTTP, scheduling on a loaded machine).
ANSWER_MARGIN_SECONDS = 1.5
STREAM_ORDERS = 16
STREAMS_PER_ORDER = 2
WRITERS = 3
WRITES_PER_SECOND = 18
STREAM_ORDER_CHANGE_INTERVAL = 0.4
BEFORE_KILL_SECONDS = 4
AFTER_RECOVERY_SECONDS = 5
ADVANCES = ("paid", "processing", "shipped", "delivered")
# How the primary dies (PatroniNode.die): "node", or "postmaster" to reproduce the visible-but-lost commit.
KILL = os.environ.get("FAILOVER_KILL", "node")


def log(line):
    say(SCRIPT, line)


def substituted(name, replacements):
    """The committed file with each (old, new) replaced; each `old` must occur as often as given,
    so a changed file fails here instead of silently running another setup."""
    with open(os.path.join(DEPLOY, name)) as committed:
        text = committed.read()
    for old, new, count in replacements:
        found = text.count(old)
        check(found == count, f"deploy/patroni/{name} must name {old!r} {count} times (found {found})")
        text = text.replace(old, new)
    return text


def http_get(url, timeout=2.0):
    """(status, body) of a GET, or (None, error) when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()
    except OSError as error:
        return None, str(error)


class Child:
    """A process of the test's cluster, logging to a file in the temp dir."""

    def __init__(self, name, command, log_path, cwd=None):
        self.name = name
        self.log_path = log_path
        self.log_file = open(log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self.log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        cwd=cwd, start_new_session=True)

    def alive(self):
        return self.process.poll() is None

    def stop(self, within=20.0):
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=within)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log_file.close()

    def log_tail(self, lines=30):
        with open(self.log_path, errors="replace") as log_file:
            return "".join(log_file.readlines()[-lines:])


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            return [int(child) for child in listing.read().split()]
    except OSError:
        return []


class PatroniNode:
    """One Patroni node and its PostgreSQL, run as postgres through runuser."""

    def __init__(self, cluster, name, etcd_port, pg_port, api_port):
        self.name = name
        self.pg_port = pg_port
        self.api_port = api_port
        self.data_dir = os.path.join(cluster.postgres_dir, name)
        committed_port = {"node1": 5432, "node2": 5433}[name]
        committed_api = {"node1": 8008, "node2": 8009}[name]
        self.config_path = os.path.join(cluster.prefix, f"{name}.yml")
        with open(self.config_path, "w") as config:
            config.write(substituted(f"{name}.yml", [
                (f"127.0.0.1:{committed_api}", f"127.0.0.1:{api_port}", 2),
                (f"127.0.0.1:{committed_port}", f"127.0.0.1:{pg_port}", 3),
                ("127.0.0.1:2379", f"127.0.0.1:{etcd_port}", 1),
                (f"/var/lib/patroni/{name}", self.data_dir, 2),
                ("/var/run/postgresql", cluster.postgres_dir, 1),
                ("/etc/patroni/post-bootstrap.sh", cluster.post_bootstrap, 1),
            ]))
        shutil.chown(self.config_path, "postgres", "postgres")
        os.chmod(self.config_path, 0o600)
        self.child = None

    def start(self, log_dir):
        # runuser: PostgreSQL refuses to run as root, and Patroni starts it.
        self.child = Child(f"patroni {self.name}", ["runuser", "-u", "postgres", "--", "patroni", self.config_path],
                           os.path.join(log_dir, f"patroni-{self.name}.log"), cwd=log_dir)
        return self

    @property
    def api(self):
        return f"http://127.0.0.1:{self.api_port}"

    def role_answers(self, path):
        return http_get(self.api + path, timeout=1)[0] == 200

    def patroni_pid(self):
        """The Patroni process itself: runuser's child when runuser stays to close the PAM session."""
        pid = self.child.process.pid
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            program = os.path.basename(cmdline.read().split(b"\0")[0])
        if program != b"runuser":
            return pid
        below = children_of(pid)
        check(len(below) == 1, f"expected runuser {pid} of {self.name} to have one child (Patroni), found {below}")
        return below[0]

    def postmaster_pid(self):
        with open(os.path.join(self.data_dir, "postmaster.pid")) as pid_file:
            return int(pid_file.readline())

    def die(self, how):
        """The node dies. "node" (the default): Patroni, the postmaster and every backend are frozen
        with SIGSTOP, then killed with SIGKILL, so none outlives the others, as when the machine
        fails. Patroni must die too: alive, it would restart the postmaster while it holds the
        leader key. "postmaster": only Patroni and then the postmaster get SIGKILL; their backends
        see the postmaster gone and exit on their own, and one waiting for the standby's
        confirmation of its commit makes that commit visible first (see docs/operations.md)."""
        patroni, postmaster = self.patroni_pid(), self.postmaster_pid()
        doomed = [patroni, postmaster]
        if how == "node":
            # The postmaster first, so it forks no backend after its children are listed.
            for pid in doomed:
                os.kill(pid, signal.SIGSTOP)
            backends = children_of(postmaster)
            for pid in backends:
                os.kill(pid, signal.SIGSTOP)
            doomed += backends
        for pid in doomed:
            os.kill(pid, signal.SIGKILL)
        return patroni, postmaster, len(doomed)


class Cluster:
    """etcd, two Patroni nodes and HAProxy under one temp dir, all on free ports."""

    def __init__(self):
        self.prefix = tempfile.mkdtemp(prefix="order-status-failover.")
        # The postgres user must reach its data dirs and sockets under it.
        os.chmod(self.prefix, 0o755)
        # Patroni's data dirs, password files and PostgreSQL's sockets, writable by postgres alone.
        self.postgres_dir = os.path.join(self.prefix, "patroni")
        os.mkdir(self.postgres_dir, 0o700)
        shutil.chown(self.postgres_dir, "postgres", "postgres")
        self.post_bootstrap = os.path.join(self.prefix, "post-bootstrap.sh")
        shutil.copy(os.path.join(DEPLOY, "post-bootstrap.sh"), self.post_bootstrap)
        os.chmod(self.post_bootstrap, 0o755)
        self.etcd_port, self.etcd_peer_port = free_port(), free_port()
        self.haproxy_port, self.stats_port = free_port(), free_port()
        self.nodes = []
        self.etcd = None
        self.haproxy = None

    @property
    def database_url(self):
        return f"postgres://{SERVICE_ROLE}:{SERVICE_PASSWORD}@127.0.0.1:{self.haproxy_port}/{SERVICE_DATABASE}"

    def start(self):
        self.nodes = [PatroniNode(self, "node1", self.etcd_port, free_port(), free_port()),
                      PatroniNode(self, "node2", self.etcd_port, free_port(), free_port())]
        etcd_dir = os.path.join(self.prefix, "etcd")
        etcd_config = os.path.join(self.prefix, "etcd.conf.yml")
        with open(etcd_config, "w") as config:
            config.write(substituted("etcd.conf.yml", [
                ("/var/lib/etcd/order-status", etcd_dir, 1),
                ("127.0.0.1:2379", f"127.0.0.1:{self.etcd_port}", 2),
                ("127.0.0.1:2380", f"127.0.0.1:{self.etcd_peer_port}", 3),
            ]))
        self.etcd = Child("etcd", ["etcd", "--config-file", etcd_config], os.path.join(self.prefix, "etcd.log"))
        wait_until("etcd to be healthy", lambda: self._alive(self.etcd) and
                   http_get(f"http://127.0.0.1:{self.etcd_port}/health")[0] == 200, timeout=30, interval=0.1)
        first, second = self.nodes
        first.start(self.prefix)
        wait_until("node1 to bootstrap and lead", lambda: self._alive(first.child) and first.role_answers("/primary"),
                   timeout=90, interval=0.2)
        second.start(self.prefix)
        wait_until("node2 to be the synchronous standby", lambda: self._alive(second.child) and second.role_answers("/sync"),
                   timeout=90, interval=0.2)
        haproxy_config = os.path.join(self.prefix, "haproxy.cfg")
        with open(haproxy_config, "w") as config:
            config.write(substituted("haproxy.cfg", [
                ("127.0.0.1:5000", f"127.0.0.1:{self.haproxy_port}", 2),
                ("127.0.0.1:5432 ", f"127.0.0.1:{first.pg_port} ", 1),
                ("127.0.0.1:5433 ", f"127.0.0.1:{second.pg_port} ", 1),
                ("check port 8008", f"check port {first.api_port}", 1),
                ("check port 8009", f"check port {second.api_port}", 1),
                ("127.0.0.1:7000", f"127.0.0.1:{self.stats_port}", 2),
            ]))
        checked = subprocess.run(["haproxy", "-c", "-f", haproxy_config], capture_output=True, text=True)
        check(checked.returncode == 0, f"haproxy -c refused the configuration:\n{checked.stdout}{checked.stderr}")
        # -db: in the foreground, so the test owns the process.
        self.haproxy = Child("haproxy", ["haproxy", "-db", "-f", haproxy_config], os.path.join(self.prefix, "haproxy.log"))
        wait_until("HAProxy to see node1 up", lambda: self._alive(self.haproxy) and self.haproxy_up() == {"node1"}, timeout=15)
        return self

    def haproxy_up(self):
        """The servers HAProxy's stats call UP."""
        status, body = http_get(f"http://127.0.0.1:{self.stats_port}/;csv", timeout=1)
        if status != 200:
            return set()
        up = set()
        for line in body.decode().splitlines():
            fields = line.split(",")
            if len(fields) > 17 and fields[0] == "order_status_primary" and fields[1] in ("node1", "node2") and fields[17].startswith("UP"):
                up.add(fields[1])
        return up

    @staticmethod
    def _alive(child):
        if not child.alive():
            raise CheckFailed(f"{child.name} exited with {child.process.returncode}:\n{child.log_tail()}")
        return True

    def psql(self, node, sql):
        environment = dict(os.environ, PGPASSWORD=SERVICE_PASSWORD)
        done = subprocess.run(["psql", "-X", "-At", "-F", "\t", "-h", "127.0.0.1", "-p", str(node.pg_port), "-U", SERVICE_ROLE,
                               "-d", SERVICE_DATABASE, "-v", "ON_ERROR_STOP=1", "-c", sql],
                              capture_output=True, text=True, env=environment, timeout=30)
        check(done.returncode == 0, f"psql on {node.name} failed: {done.stderr}")
        return [line.split("\t") for line in done.stdout.splitlines() if line]

    def stop(self):
        if self.haproxy is not None:
            self.haproxy.stop()
        for node in self.nodes:
            if node.child is not None:
                node.child.stop(within=30)
        if self.etcd is not None:
            self.etcd.stop()
        self._reap_strays()

    def _reap_strays(self):
        """PostgreSQL processes left by a killed node (their cwd is its data dir under the prefix)."""
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cwd = os.readlink(f"/proc/{entry}/cwd")
            except OSError:
                continue
            if cwd.startswith(self.prefix + "/"):
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass

    def log_tails(self):
        for child in (self.etcd, *(node.child for node in self.nodes), self.haproxy):
            if child is not None:
                log(f"--- {child.name} log ---\n{child.log_tail()}")

    def remove(self):
        shutil.rmtree(self.prefix, ignore_errors=True)


class Subscriber(threading.Thread):
    """An EventSource-like client: reads `retry:`, and after the stream ends or fails waits that
    long and reconnects with Last-Event-ID (also after a 503, which a browser would not retry)."""

    def __init__(self, name, base_url, path, stop):
        super().__init__(name=name, daemon=True)
        self.base_url = base_url
        self.path = path
        self.stop_event = stop
        self.retry_seconds = 3.0
        self.last_event_id = None
        self.events = []  # (event JSON, SSE id, arrival time)
        self.connections = 0
        self.refusals = []  # statuses other than 200
        self.ended = False
        self.failure = None

    def run(self):
        try:
            while not self.stop_event.is_set() and not self.ended:
                self._connect_once()
                if self.ended or self.stop_event.wait(self.retry_seconds):
                    break
        except Exception as error:  # reported by the main thread
            self.failure = f"{self.name}: {error!r}"

    def _connect_once(self):
        port = int(self.base_url.rsplit(":", 1)[1])
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            headers = {"Accept": "text/event-stream"}
            if self.last_event_id is not None:
                headers["Last-Event-ID"] = self.last_event_id
            connection.request("GET", self.path, headers=headers)
            response = connection.getresponse()
            self.connections += 1
            if response.status == 204:
                self.ended = True
                return
            if response.status != 200:
                body = response.read()
                self.refusals.append((response.status, response.getheader("content-type"), body[:200]))
                return
            self._read(response)
        except (OSError, http.client.HTTPException):
            return  # a dropped or silent connection: reconnect after the retry delay
        finally:
            connection.close()

    def _read(self, response):
        fields = {}
        buffer = b""
        while not self.stop_event.is_set():
            chunk = response.read1(65536)
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode()
                if line == "":
                    self._dispatch(fields)
                    fields = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    fields[key] = value[1:] if value.startswith(" ") else value
                    if key == "retry" and fields[key].isdigit():
                        self.retry_seconds = int(fields[key]) / 1000

    def _dispatch(self, fields):
        if "id" in fields:
            self.last_event_id = fields["id"]
        if fields.get("event") == "order-status" and "data" in fields:
            event = json.loads(fields["data"])
            self.events.append((event, fields.get("id"), time.monotonic()))
            if event.get("terminal") and "/events/order-status/" in self.path:
                self.ended = True


class Writers:
    """POSTs at a steady rate: writer threads that create orders and move each through its
    statuses, and one that moves the streamed orders, slower, so their changes span the outage."""

    def __init__(self, base_urls, stream_orders, stop):
        self.base_urls = base_urls
        self.stream_orders = stream_orders
        self.stop_event = stop
        self.results = []  # dicts: started, took, status, content_type, order, target, event_id
        self.lock = threading.Lock()
        self.failure = None
        self.threads = [threading.Thread(target=self._guard, args=(self._feed_writer, index), daemon=True) for index in range(WRITERS)]
        self.threads.append(threading.Thread(target=self._guard, args=(self._stream_order_writer, 0), daemon=True))

    def start(self):
        for thread in self.threads:
            thread.start()

    def join(self):
        for thread in self.threads:
            thread.join(timeout=30)
            check(not thread.is_alive(), "a writer did not finish within 30 s of being stopped")

    def _guard(self, body, index):
        try:
            body(index)
        except Exception as error:
            self.failure = f"writer {index}: {error!r}"

    def _post(self, base_url, path, body, order, target):
        started = time.monotonic()
        try:
            status, headers, data = request(base_url, "POST", path, body, {"Content-Type": "application/json"}, timeout=15)
        except OSError as error:
            # A hang (no answer in 15 s) or a dropped connection: both fail the test.
            status, headers, data = None, {}, repr(error).encode()
        took = time.monotonic() - started
        event_id = None
        if status == 201:
            event_id = json.loads(data)["lastEventId"]
        elif status == 200:
            event = json.loads(data)["event"]
            event_id = event["id"] if event else None
        result = {"started": started, "took": took, "status": status, "content_type": headers.get("content-type"),
                  "order": order, "target": target, "event_id": event_id, "body": data[:300]}
        with self.lock:
            self.results.append(result)
        return result

    def _paced(self, period, offset):
        """Yields slot after slot `period` apart; a slot missed (a slow answer) is skipped, not caught up."""
        next_at = time.monotonic() + offset
        while not self.stop_event.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self.stop_event.wait(delay):
                return
            yield
            next_at += period
            now = time.monotonic()
            while next_at < now:
                next_at += period

    def _feed_writer(self, index):
        period = WRITERS / WRITES_PER_SECOND
        order, step, created = None, 0, False
        for slot, _ in enumerate(self._paced(period, offset=index * period / WRITERS)):
            base_url = self.base_urls[(slot + index) % len(self.base_urls)]
            if order is None:
                order, step, created = f"fo-{index}-{uuid.uuid4().hex[:10]}", 0, False
            if not created:
                result = self._post(base_url, "/orders", {"id": order}, order, "pending")
                # 409 only after a 503: the create that "failed" had committed.
                created = result["status"] == 201 or (result["status"] == 409 and self._failed_before(order))
                continue
            self._post(base_url, f"/orders/{order}/status", {"status": ADVANCES[step]}, order, ADVANCES[step])
            # A failed change is not repeated: the next one skips forward, which the model allows.
            step += 1
            if step == len(ADVANCES):
                order = None

    def _failed_before(self, order):
        with self.lock:
            return any(result["order"] == order and result["status"] == 503 for result in self.results)

    def _stream_order_writer(self, _):
        steps = {order: 0 for order in self.stream_orders}
        turn = 0
        for _ in self._paced(STREAM_ORDER_CHANGE_INTERVAL, offset=0):
            # Up to shipped only: the streams stay open (delivered would end them).
            pending = [order for order in self.stream_orders if steps[order] < 3]
            if not pending:
                return
            order = pending[turn % len(pending)]
            turn += 1
            target = ADVANCES[steps[order]]
            self._post(self.base_urls[turn % len(self.base_urls)], f"/orders/{order}/status", {"status": target}, order, target)
            steps[order] += 1


class ReadinessWatch(threading.Thread):
    """Polls /readyz of every instance and Patroni's /primary of the standby, every 50 ms."""

    def __init__(self, services, standby, stop):
        super().__init__(daemon=True)
        self.services = services
        self.standby = standby
        self.stop_event = stop
        self.readiness = []  # (time, service name, status)
        self.standby_primary_at = None

    def run(self):
        while not self.stop_event.wait(0.05):
            for service in self.services:
                try:
                    status = request(service.base_url, "GET", "/readyz", timeout=3)[0]
                except OSError:
                    status = None
                self.readiness.append((time.monotonic(), service.name, status))
            if self.standby_primary_at is None and self.standby.role_answers("/primary"):
                self.standby_primary_at = time.monotonic()


def open_subscribers(services, stream_orders, stop):
    subscribers = []
    for index in range(STREAM_ORDERS * STREAMS_PER_ORDER):
        order = stream_orders[index % STREAM_ORDERS]
        # Each order's streams on different instances.
        service = services[(index // STREAM_ORDERS) % len(services)]
        subscribers.append(Subscriber(f"stream-{index}-{order}", service.base_url, f"/events/order-status/{order}", stop))
    for service in services:
        subscribers.append(Subscriber(f"feed-{service.name}", service.base_url, "/events/order-status", stop))
    for subscriber in subscribers:
        subscriber.start()
    wait_until("every stream to get its order's first event and every feed to connect",
               lambda: all(s.events if "/events/order-status/" in s.path else s.connections for s in subscribers), timeout=30)
    return subscribers


def check_writes(writers, kill_at):
    failed = [r for r in writers.results if r["status"] not in (200, 201)]
    for result in failed:
        if result["status"] == 409 and result["target"] == "pending":
            continue  # the retried create of one that committed behind a 503: checked in _feed_writer
        check(result["status"] == 503, f"a POST for {result['order']} ({result['target']}) answered {result['status']}: {result['body']!r}")
        check(result["content_type"] == "application/problem+json",
              f"a 503 came as {result['content_type']}, not application/problem+json: {result['body']!r}")
        check(result["took"] <= DATABASE_TIMEOUT_SECONDS + ANSWER_MARGIN_SECONDS,
              f"a failed POST took {result['took']:.2f} s (bound {DATABASE_TIMEOUT_SECONDS} s + {ANSWER_MARGIN_SECONDS} s)")
        check(result["started"] >= kill_at - 0.5, f"a POST failed {kill_at - result['started']:.1f} s before the kill: {result['body']!r}")
    failures = [r for r in failed if r["status"] == 503]
    succeeded = [r for r in writers.results if r["status"] in (200, 201)]
    check(any(r["started"] > kill_at for r in succeeded), "no POST succeeded after the failover")
    return succeeded, failures


def check_table(cluster, new_primary, succeeded):
    rows = cluster.psql(new_primary, "SELECT id, order_id, status, feed_xact FROM order_events ORDER BY feed_xact, id")
    table = [(int(row[0]), row[1], row[2], int(row[3])) for row in rows]
    ids = {row[0] for row in table}
    missing = [r for r in succeeded if r["event_id"] is not None and r["event_id"] not in ids]
    check(not missing, f"{len(missing)} acknowledged changes are not in the new primary's event table, e.g. {missing[:3]}")
    return table


def expected_deliveries(subscribers, table, feed_started_after):
    """What each subscriber must have got, from the table: a stream, its order's events in id
    order; a feed, every event after it opened, in feed order (feed_xact, id)."""
    by_order = {}
    for event_id, order, status, _ in table:
        by_order.setdefault(order, []).append((event_id, status))
    expected = {}
    for subscriber in subscribers:
        if "/events/order-status/" in subscriber.path:
            expected[subscriber.name] = by_order[subscriber.path.rsplit("/", 1)[1]]
        else:
            expected[subscriber.name] = [(event_id, status) for event_id, _, status, _ in table if event_id > feed_started_after]
    return expected


def check_delivery(subscribers, expected, writers=None, kill_at=0.0):
    for subscriber in subscribers:
        try:
            check_subscriber(subscriber, expected)
        except CheckFailed as failure:
            order = subscriber.path.rsplit("/", 1)[1]
            seen = [(event["id"], event["status"], round(arrived - kill_at, 2)) for event, _, arrived in subscriber.events]
            posts = [(r["target"], r["status"], r["event_id"], round(r["started"] - kill_at, 2), round(r["took"], 2))
                     for r in (writers.results if writers else []) if r["order"] == order]
            raise CheckFailed(f"{failure}\n  received (id, status, s after the kill): {seen}\n  POSTs (target, status, event, "
                              f"s after the kill, took): {posts}\n  connections {subscriber.connections}, refusals {subscriber.refusals}")


def check_subscriber(subscriber, expected):
    if True:
        check(subscriber.failure is None, f"a subscriber failed: {subscriber.failure}")
        got = [(event["id"], event["status"]) for event, _, _ in subscriber.events]
        want = expected[subscriber.name]
        phantoms = [pair for pair in got if pair not in want]
        check(not phantoms, f"{subscriber.name} got {len(phantoms)} events that the new primary's table does not hold: {phantoms} "
                            "(a commit the old primary showed before its standby had it)")
        check(len(got) == len(set(got)), f"{subscriber.name} got {len(got) - len(set(got))} events twice: {got}")
        missing = [pair for pair in want if pair not in got]
        check(not missing, f"{subscriber.name} never got {len(missing)} of the {len(want)} events the table holds for it, e.g. {missing[:3]}")
        check(got == want, f"{subscriber.name} got {len(got)} events, not the table's {len(want)} in order; "
                           f"first differences: {[pair for pair in zip(got, want) if pair[0] != pair[1]][:3]}")


def delivery_resumed_at(subscribers, succeeded, kill_at):
    """When the first change acknowledged after the kill had reached every subscriber of its order."""
    first = min((r for r in succeeded if r["started"] > kill_at and r["event_id"] is not None), key=lambda r: r["started"])
    arrivals = []
    for subscriber in subscribers:
        if "/events/order-status/" in subscriber.path and not subscriber.path.endswith("/" + first["order"]):
            continue
        arrivals += [arrived for event, _, arrived in subscriber.events if event["id"] == first["event_id"]]
    return first, max(arrivals)


def run(cluster, services):
    first, second = cluster.nodes
    os.environ["DATABASE_URL"] = cluster.database_url
    for service in services:
        service.start()
    log(f"etcd, Patroni {first.name} (primary) and {second.name} (synchronous standby), HAProxy on 127.0.0.1:{cluster.haproxy_port}, "
        f"{len(services)} instances; configs from deploy/patroni in {cluster.prefix}")
    base_urls = [service.base_url for service in services]
    stream_orders = [f"so-{index}-{uuid.uuid4().hex[:8]}" for index in range(STREAM_ORDERS)]
    for order in stream_orders:
        status, _, body = request(base_urls[0], "POST", "/orders", {"id": order}, {"Content-Type": "application/json"})
        check(status == 201, f"creating {order} answered {status}: {body[:200]!r}")
    feed_started_after = max(int(row[0]) for row in cluster.psql(first, "SELECT id FROM order_events"))
    stop_subscribers, stop_writers, stop_watch = threading.Event(), threading.Event(), threading.Event()
    subscribers = open_subscribers(services, stream_orders, stop_subscribers)
    writers = Writers(base_urls, stream_orders, stop_writers)
    watch = ReadinessWatch(services, second, stop_watch)
    try:
        writers.start()
        watch.start()
        time.sleep(BEFORE_KILL_SECONDS)  # writes and deliveries under way before the failure, by design
        check(writers.failure is None, writers.failure or "")
        patroni_pid, postmaster_pid, killed = first.die(KILL)
        kill_at = time.monotonic()
        if KILL == "node":
            log(f"{first.name} died: its Patroni (pid {patroni_pid}), postmaster (pid {postmaster_pid}) and {killed - 2} backends "
                f"frozen with SIGSTOP, then killed with SIGKILL")
        else:
            log(f"killed {first.name}'s Patroni (pid {patroni_pid}) and then its postmaster (pid {postmaster_pid}) with SIGKILL")
        wait_until(f"{second.name} to be promoted", lambda: watch.standby_primary_at, timeout=60, interval=0.05)
        wait_until("every instance to be ready again", lambda: all(
            request(service.base_url, "GET", "/readyz", timeout=3)[0] == 200 for service in services), timeout=60, interval=0.1)
        recovered_at = time.monotonic()
        stop_writers.wait(AFTER_RECOVERY_SECONDS)
    finally:
        stop_writers.set()
        writers.join()
        stop_watch.set()
        watch.join(timeout=10)
    check(writers.failure is None, writers.failure or "")
    without_primary = watch.standby_primary_at - kill_at
    succeeded, failures = check_writes(writers, kill_at)
    table = check_table(cluster, second, succeeded)
    check(cluster.psql(second, "SELECT pg_is_in_recovery()") == [["f"]], f"{second.name} is not the primary")
    expected = expected_deliveries(subscribers, table, feed_started_after)
    try:
        wait_until("every subscriber to receive what the table holds",
                   lambda: all(len(s.events) >= len(expected[s.name]) for s in subscribers), timeout=30, interval=0.1)
    except CheckFailed:
        pass  # check_delivery says which subscriber lacks what
    stop_subscribers.set()
    for service in services:
        check(service.process.poll() is None, f"{service.name} exited")
    check_delivery(subscribers, expected, writers, kill_at)

    for service in services:
        states = [(at, status) for at, name, status in watch.readiness if name == service.name]
        down = [at for at, status in states if at > kill_at and status == 503]
        check(down, f"{service.name}'s /readyz never answered 503 after the kill")
        wrong = [at - kill_at for at, status in states if kill_at + 1.0 < at < watch.standby_primary_at and status == 200]
        check(not wrong, f"{service.name}'s /readyz answered 200 at {wrong[:3]} s after the kill, with no primary")
        others = {status for _, status in states if status not in (200, 503)}
        check(not others, f"{service.name}'s /readyz answered {others}")
        reconnects = metric(service.base_url, "order_status_listener_reconnects_total")
        check(reconnects >= 1, f"{service.name}'s listener did not reconnect")
        log(f"{service.name}: /readyz 503 from {min(down) - kill_at:.2f} s to {max(down) - kill_at:.2f} s after the kill, "
            f"200 again by {recovered_at - kill_at:.2f} s; listener reconnects {reconnects:.0f}; same process")
    first_after, resumed_at = delivery_resumed_at(subscribers, succeeded, kill_at)
    worst = max((r["took"] for r in failures), default=0.0)
    streams = sum(1 for s in subscribers if "/events/order-status/" in s.path)
    reconnections = sum(s.connections - 1 for s in subscribers)
    refusals = sum(len(s.refusals) for s in subscribers)
    log(f"{len(writers.results)} POSTs ({len(succeeded)} 2xx, all in {second.name}'s table; {len(failures)} failed, each a 503 "
        f"problem+json, slowest in {worst * 1000:.0f} ms); {streams} streams and {len(subscribers) - streams} feeds got every "
        f"event exactly once, in order ({len(table)} events; {reconnections} reconnections, {refusals} refused with 503)")
    log(f"time without a primary: {without_primary:.2f} s (kill to {second.name}'s /primary 200); "
        f"first POST acknowledged {first_after['started'] + first_after['took'] - kill_at:.2f} s after the kill; "
        f"delivery resumed {resumed_at - kill_at:.2f} s after the kill (that change at every subscriber of it)")


def main():
    cluster = Cluster()
    settings = {"DATABASE_TIMEOUT_SECONDS": str(DATABASE_TIMEOUT_SECONDS), "HEARTBEAT_SECONDS": "2", "SSE_RETRY_MS": "1000",
                "LISTENER_PING_SECONDS": "2", "LISTENER_PING_TIMEOUT_SECONDS": "2", "DATABASE_POOL_SIZE": "8", "LOG_LEVEL": os.environ.get("FAILOVER_LOG_LEVEL", "info")}
    services = [ServiceProcess(settings=settings, name="order-status-1"), ServiceProcess(settings=settings, name="order-status-2")]
    try:
        cluster.start()
        run(cluster, services)
        log("passed")
        return 0
    except CheckFailed as failure:
        log(f"FAILED: {failure}")
        for service in services:
            log(f"--- {service.name} log ---\n{service.log_tail()}")
        cluster.log_tails()
        keep = os.environ.get("FAILOVER_KEEP_LOGS")
        if keep:
            # For debugging: the whole logs, copied before the temp dir goes.
            os.makedirs(keep, exist_ok=True)
            for service in services:
                shutil.copy(service.log.name, os.path.join(keep, f"{service.name}.log"))
            for name in os.listdir(cluster.prefix):
                if name.endswith(".log"):
                    shutil.copy(os.path.join(cluster.prefix, name), os.path.join(keep, name))
            log(f"logs kept in {keep}")
        return 1
    finally:
        for service in services:
            service.stop()
            service.remove_log()
        cluster.stop()
        cluster.remove()


if __name__ == "__main__":
    sys.exit(main())
