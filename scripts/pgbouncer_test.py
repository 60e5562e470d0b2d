"""The whole contract through a real PgBouncer (Debian's package) in transaction mode, configured by
deploy/pgbouncer/pgbouncer.ini (only its addresses, ports and paths substituted). The service's
request pool goes through PgBouncer (DATABASE_URL); its LISTEN connection goes straight to
PostgreSQL (DATABASE_LISTEN_URL), on a database of its own made for the run, so the migrations
go through PgBouncer too. Run through scripts/pgbouncer-test.sh. Checks:
  - the pool's connections reach PostgreSQL through PgBouncer and the listener's does not;
  - REST, a stream and its Last-Event-ID replay, a held poll answered by a change, a feed resumed
    from its cursor and a held feed poll;
  - concurrent status changes from many clients over PgBouncer's shared server connections: every
    stream gets each of its order's events once, in order; of racing changes with the same
    If-Match exactly one wins and the others get 412;
  - with named prepared statements (DATABASE_STATEMENTS=prepared, the default) requests fail
    with 500 and the log names the setting to change;
  - schemathesis (scripts/schemathesis.sh) against a service configured the same way.
On the store's named prepared statements (DATABASE_STATEMENTS=prepared) this test fails: a
statement prepared on one server connection is missing, or already exists, on the next."""

import http.client
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid

from live_service import ROOT, CheckFailed, ServiceProcess, check, database_url, free_port, metric, post_json, request, say, wait_until

SCRIPT = "pgbouncer-test"
PGBOUNCER_INI = os.path.join(ROOT, "deploy", "pgbouncer", "pgbouncer.ini")
# PgBouncer checks this password (auth_type in the committed file); the throwaway cluster trusts.
PASSWORD = "pgbouncer-test-password"
USER = "postgres"
LIFECYCLE = ("paid", "processing", "shipped", "delivered")


def log(line):
    say(SCRIPT, line)


def substitute(text, pattern, replacement, what):
    text, found = re.subn(pattern, lambda _: replacement, text, flags=re.MULTILINE)
    check(found == 1, f"deploy/pgbouncer/pgbouncer.ini must hold one {what} line (found {found})")
    return text


def bouncer_config(directory, port, database):
    """deploy/pgbouncer/pgbouncer.ini with the test's addresses: the substitutions a deployment makes."""
    with open(PGBOUNCER_INI) as committed:
        text = committed.read()
    server = urllib.parse.urlsplit(database)
    text = substitute(text, r"^order_status = host=127\.0\.0\.1 port=5432 dbname=order_status$",
                      f"order_status = host={server.hostname} port={server.port or 5432} dbname={server.path.lstrip('/')}", "[databases] order_status")
    text = substitute(text, r"^listen_port = 6432$", f"listen_port = {port}", "listen_port")
    for name in ("unix_socket_dir", "logfile", "pidfile", "auth_file"):
        path = {"unix_socket_dir": directory, "logfile": f"{directory}/pgbouncer.log", "pidfile": f"{directory}/pgbouncer.pid",
                "auth_file": f"{directory}/userlist.txt"}[name]
        text = substitute(text, rf"^{name} = .*$", f"{name} = {path}", name)
    check(re.search(r"^pool_mode = transaction$", text, re.MULTILINE), "the committed file must pool by transaction")
    return text


class PgBouncer:
    """A private PgBouncer in the foreground: its config, userlist, socket, pid and log in a temp dir."""

    def __init__(self, database):
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix="order-status-pgbouncer.")
        self.binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        self.ini = os.path.join(self.directory, "pgbouncer.ini")
        with open(self.ini, "w") as ini:
            ini.write(bouncer_config(self.directory, self.port, database))
        with open(os.path.join(self.directory, "userlist.txt"), "w") as users:
            users.write(f'"{USER}" "{PASSWORD}"\n')
        # PgBouncer refuses to run as root: as root, run it as the postgres user, who owns the dir.
        self.command = [self.binary, self.ini]
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
            for name in ("pgbouncer.ini", "userlist.txt"):
                shutil.chown(os.path.join(self.directory, name), "postgres", "postgres")
            self.command = ["runuser", "-u", "postgres", "--", *self.command]
        self.process = None

    @property
    def pid(self):
        """PgBouncer's own process id (as root, `process` is runuser's)."""
        with open(os.path.join(self.directory, "pgbouncer.pid")) as pidfile:
            return int(pidfile.read())

    def url(self, database="order_status"):
        return f"postgres://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    def start(self):
        self.process = subprocess.Popen(self.command, cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_until(f"PgBouncer to accept on 127.0.0.1:{self.port}", self._answers, timeout=15, interval=0.05)
        return self

    def _answers(self):
        if self.process.poll() is not None:
            raise CheckFailed(f"pgbouncer exited with {self.process.returncode}:\n{self.log_tail()}")
        return psql(self.url("pgbouncer"), "SHOW VERSION", check_status=False) is not None

    def show(self, what):
        """A SHOW of the admin console as a list of dicts."""
        rows = psql(self.url("pgbouncer"), f"SHOW {what}", header=True)
        names = rows[0]
        return [dict(zip(names, row)) for row in rows[1:]]

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
            with open(os.path.join(self.directory, "pgbouncer.log"), errors="replace") as log_file:
                return "".join(log_file.readlines()[-lines:])
        except FileNotFoundError:
            return "(none)"

    def remove(self):
        shutil.rmtree(self.directory, ignore_errors=True)


def psql_binary():
    found = shutil.which("psql")
    if found:
        return found
    pgbin = os.environ.get("ORDER_STATUS_TEST_PGBIN")
    if pgbin and os.access(os.path.join(pgbin, "psql"), os.X_OK):
        return os.path.join(pgbin, "psql")
    raise CheckFailed("no psql found (PostgreSQL's client)")


def psql(url, sql, header=False, check_status=True):
    """Rows of one statement as lists of strings (the first the column names with header=True);
    None when psql failed and check_status is False."""
    parts = urllib.parse.urlsplit(url)
    environment = dict(os.environ, PGPASSWORD=parts.password or "", PGCONNECT_TIMEOUT="5")
    command = [psql_binary(), "-X", "-A", "-F", "\t", "-h", parts.hostname, "-p", str(parts.port), "-U", parts.username or USER,
               "-d", parts.path.lstrip("/"), "-c", sql]
    if not header:
        command.insert(2, "-t")
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=20)
    if done.returncode != 0:
        if not check_status:
            return None
        raise CheckFailed(f"psql {sql!r} on port {parts.port} failed: {done.stderr.strip()}")
    lines = [line for line in done.stdout.splitlines() if line]
    if header and lines and re.fullmatch(r"\(\d+ rows?\)", lines[-1]):
        lines = lines[:-1]
    return [line.split("\t") for line in lines]


class EventStream:
    """An SSE response read block by block as it arrives. The service answers a stream with
    `Connection: close`, on which http.client drops the connection's socket: keep it for timeouts."""

    def __init__(self, base_url, order_id=None, last_event_id=None, path=None):
        port = int(base_url.rsplit(":", 1)[1])
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        self.connection.request("GET", path or f"/events/order-status/{order_id}", headers=headers)
        self.socket = self.connection.sock
        self.response = self.connection.getresponse()
        self.buffer = b""

    def next_block(self, timeout=10.0):
        """The next block (up to a blank line); None when the stream ended."""
        deadline = time.monotonic() + timeout
        while b"\n\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CheckFailed(f"no SSE block within {timeout:g} s (have {self.buffer[-300:]!r})")
            self.socket.settimeout(remaining)
            chunk = self.response.read1(65536)
            if not chunk:
                return None
            self.buffer += chunk
        block, self.buffer = self.buffer.split(b"\n\n", 1)
        return block.decode()

    def next_event(self, timeout=10.0, name="order-status"):
        """The next event named `name` as its JSON, skipping retry, heartbeats and other events."""
        while True:
            block = self.next_block(timeout)
            check(block is not None, "the stream ended before the expected event")
            lines = block.split("\n")
            if f"event: {name}" not in lines:
                continue
            for line in lines:
                if line.startswith("data: "):
                    return json.loads(line[len("data: "):])

    def close(self):
        self.response.close()
        self.socket.close()


def check_connections(bouncer, direct, service):
    """The pool's connections are PgBouncer's clients; the listener's is PostgreSQL's own client."""
    pools = [pool for pool in bouncer.show("POOLS") if pool["database"] == "order_status"]
    check(pools and pools[0]["pool_mode"] == "transaction", f"PgBouncer's order_status pool: {pools}")
    clients = [client for client in bouncer.show("CLIENTS") if client["database"] == "order_status"]
    names = sorted(client.get("application_name", "") for client in clients)
    check("order-status" in names, f"the service's pool should be PgBouncer's client; its clients: {names}")
    check("order-status-listener" not in names, f"the LISTEN connection went through PgBouncer: {names}")
    listening = psql(direct, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'order-status-listener' AND query LIKE 'LISTEN %'")
    check(listening == [["1"]], f"PostgreSQL should see the one LISTEN connection directly; it sees {listening}")
    log(f"pool through PgBouncer ({len(clients)} client connection(s), pool_mode transaction); LISTEN direct to PostgreSQL")


def check_rest(base):
    order_id = f"bouncer-{uuid.uuid4().hex[:10]}"
    created = post_json(base, "/orders", {"id": order_id, "metadata": {"via": "pgbouncer"}}, 201)
    check(created["status"] == "pending", f"created: {created}")
    status, _, body = request(base, "GET", f"/orders/{order_id}")
    check(status == 200 and json.loads(body)["metadata"] == {"via": "pgbouncer"}, f"GET /orders/{order_id}: {status} {body[:200]!r}")
    status, headers, _ = request(base, "GET", "/orders/no-such-order-here")
    check(status == 404 and headers.get("content-type") == "application/problem+json", f"unknown order: {status}")
    post_json(base, "/orders", {"id": order_id}, 409)
    log("REST: create 201, read 200 with metadata, unknown 404, taken id 409")
    return order_id


def check_stream_and_replay(base, order_id):
    stream = EventStream(base, order_id)
    try:
        check(stream.response.status == 200, f"the stream answered {stream.response.status}")
        first = stream.next_event()
        check(first["status"] == "pending", f"the stream opened with {first['status']}")
        for status in ("paid", "processing"):
            post_json(base, f"/orders/{order_id}/status", {"status": status}, 200)
            event = stream.next_event(timeout=5)
            check(event["status"] == status, f"expected {status}, the stream sent {event['status']}")
    finally:
        stream.close()
    resumed = EventStream(base, order_id, last_event_id=first["id"])
    try:
        replayed = [resumed.next_event()["status"] for _ in range(2)]
        check(replayed == ["paid", "processing"], f"Last-Event-ID {first['id']} replayed {replayed}")
    finally:
        resumed.close()
    log(f"stream: live events, and Last-Event-ID {first['id']} replayed {replayed}")


def held_request(path):
    """Starts a request in a thread; returns (thread, answer dict)."""
    answer = {}
    thread = threading.Thread(target=lambda: answer.update(result=request_on(path)))
    thread.start()
    return thread, answer


def request_on(target):
    base, path = target
    return request(base, "GET", path, timeout=40)


def check_long_poll(base, order_id):
    status, _, body = request(base, "GET", f"/orders/{order_id}/status/poll")
    check(status == 200, f"the poll without after answered {status}: {body[:300]!r}")
    after = json.loads(body)["lastEventId"]
    held_before = metric(base, "order_status_held_polls")
    thread, answer = held_request((base, f"/orders/{order_id}/status/poll?after={after}&timeout=30"))
    wait_until("the poll to be held", lambda: metric(base, "order_status_held_polls") > held_before)
    post_json(base, f"/orders/{order_id}/status", {"status": "shipped"}, 200)
    thread.join(timeout=10)
    check("result" in answer, "the held poll was not answered within 10 s of the change")
    status, _, body = answer["result"]
    events = [event["status"] for event in json.loads(body)["events"]]
    check(status == 200 and events == ["shipped"], f"the held poll answered {status}: {body[:300]!r}")
    log("long poll: held, answered by the change")


def check_feed(base):
    orders = [f"bouncer-feed-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    for order_id in orders:
        post_json(base, "/orders", {"id": order_id}, 201)
    query = "&".join(f"order={order_id}" for order_id in orders)
    stream = EventStream(base, path=f"/events/order-status?{query}")
    try:
        check(stream.response.status == 200, f"the feed answered {stream.response.status}")
        first = [stream.next_event()["orderId"] for _ in orders]
        check(sorted(first) == sorted(orders), f"the feed's first events: {first}")
        cursor = stream.next_event(name="caught-up")["cursor"]
    finally:
        stream.close()
    # Changes while no feed is open, then a feed resumed from the cursor: exactly those, in order.
    post_json(base, f"/orders/{orders[0]}/status", {"status": "paid"}, 200)
    post_json(base, f"/orders/{orders[1]}/status", {"status": "cancelled"}, 200)
    resumed = EventStream(base, path=f"/events/order-status?{query}", last_event_id=cursor)
    try:
        missed = [(event["orderId"], event["status"]) for event in (resumed.next_event() for _ in range(2))]
        check(missed == [(orders[0], "paid"), (orders[1], "cancelled")], f"the feed resumed from {cursor} sent {missed}")
        cursor = resumed.next_event(name="caught-up")["cursor"]
    finally:
        resumed.close()
    held_before = metric(base, "order_status_held_polls")
    thread, answer = held_request((base, f"/poll/order-status?{query}&after={cursor}&timeout=30"))
    wait_until("the feed poll to be held", lambda: metric(base, "order_status_held_polls") > held_before)
    post_json(base, f"/orders/{orders[0]}/status", {"status": "processing"}, 200)
    thread.join(timeout=10)
    check("result" in answer, "the held feed poll was not answered within 10 s of the change")
    status, _, body = answer["result"]
    poll = json.loads(body)
    check(status == 200 and [event["status"] for event in poll["events"]] == ["processing"], f"the held feed poll answered {status}: {body[:300]!r}")
    log(f"feed: resumed from cursor {cursor!r} with the two missed events, a held feed poll answered by a change")


def check_concurrent_changes(base, orders=12):
    """Many clients at once, so the pool opens several connections and PgBouncer hands each
    transaction whichever server connection is free: where named statements break."""
    ids = [f"bouncer-race-{index}-{uuid.uuid4().hex[:8]}" for index in range(orders)]
    for order_id in ids:
        post_json(base, "/orders", {"id": order_id}, 201)
    streams = [EventStream(base, order_id) for order_id in ids]
    failures = []
    try:
        for stream in streams:
            check(stream.next_event()["status"] == "pending", "a stream did not open with pending")

        def walk(order_id):
            for status in LIFECYCLE:
                code, _, body = request(base, "POST", f"/orders/{order_id}/status", {"status": status}, {"Content-Type": "application/json"})
                if code != 200:
                    failures.append(f"{order_id} -> {status}: {code} {body[:200]!r}")
                    return

        walkers = [threading.Thread(target=walk, args=(order_id,)) for order_id in ids]
        for walker in walkers:
            walker.start()
        for walker in walkers:
            walker.join(timeout=60)
        check(not failures, f"{len(failures)} status change(s) failed through PgBouncer; first: {failures[:3]}")
        for order_id, stream in zip(ids, streams):
            seen = [stream.next_event(timeout=10)["status"] for _ in LIFECYCLE]
            check(seen == list(LIFECYCLE), f"{order_id}'s stream saw {seen}")
            check(stream.next_block(timeout=5) is None, f"{order_id}'s stream stayed open after its terminal event")
    finally:
        for stream in streams:
            stream.close()

    # Racing changes of one order, all with If-Match of its first version: one wins.
    order_id = f"bouncer-ifmatch-{uuid.uuid4().hex[:8]}"
    post_json(base, "/orders", {"id": order_id}, 201)
    codes = []
    barrier = threading.Barrier(8)

    def race():
        barrier.wait()
        codes.append(request(base, "POST", f"/orders/{order_id}/status", {"status": "paid"},
                             {"Content-Type": "application/json", "If-Match": '"1"'})[0])

    racers = [threading.Thread(target=race) for _ in range(8)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=30)
    check(sorted(codes) == [200] + [412] * 7, f"8 racing changes with If-Match \"1\" answered {sorted(codes)}")
    log(f"concurrent changes: {orders} orders x {len(LIFECYCLE)} changes at once, each stream got its events once in order; "
        "8 racing If-Match changes: one 200, seven 412")


def walk_at_once(base, count, prefix):
    """`count` orders created, then each walked through LIFECYCLE by its own thread, all at once;
    returns the answers other than 200 as (status, body)."""
    ids = [f"{prefix}-{index}-{uuid.uuid4().hex[:8]}" for index in range(count)]
    refused = []
    for order_id in ids:
        status, _, body = request(base, "POST", "/orders", {"id": order_id}, {"Content-Type": "application/json"})
        if status != 201:
            refused.append((status, body))

    def walk(order_id):
        for status in LIFECYCLE:
            code, _, body = request(base, "POST", f"/orders/{order_id}/status", {"status": status}, {"Content-Type": "application/json"})
            if code != 200:
                refused.append((code, body))

    walkers = [threading.Thread(target=walk, args=(order_id,)) for order_id in ids]
    for walker in walkers:
        walker.start()
    for walker in walkers:
        walker.join(timeout=60)
    return refused


def check_prepared_statements_are_named_in_the_log(bouncer, direct):
    """The default, named prepared statements, behind the same PgBouncer: requests fail (500), and
    the log names the setting to change, so a deployment that forgot it learns why."""
    settings = dict(service_settings(bouncer, direct), DATABASE_STATEMENTS="prepared")
    service = ServiceProcess(settings=settings, name="order-status-prepared").start()
    try:
        refused = []
        for _ in range(3):
            refused += walk_at_once(service.base_url, 12, "bouncer-prepared")
            if refused:
                break
        check(refused, "named prepared statements behind a transaction-mode PgBouncer did not fail: is PgBouncer pooling by transaction?")
        check(all(status == 500 for status, _ in refused), f"the failures were not 500s: {sorted({status for status, _ in refused})}")
        hint = "set DATABASE_STATEMENTS=unnamed"
        wait_until("the service to log the hint", lambda: hint in open(service.log.name, errors="replace").read(), timeout=5)
        log(f"DATABASE_STATEMENTS=prepared behind PgBouncer: {len(refused)} request(s) failed with 500; the log says to {hint}")
    finally:
        service.stop()
        service.remove_log()


def service_settings(bouncer, direct):
    """The settings deploy/pgbouncer/README.md gives: the pool through PgBouncer with unnamed
    statements, the listener direct. PGBOUNCER_TEST_STATEMENTS=prepared shows the failure."""
    return {"DATABASE_URL": bouncer.url(), "DATABASE_LISTEN_URL": direct,
            "DATABASE_STATEMENTS": os.environ.get("PGBOUNCER_TEST_STATEMENTS") or "unnamed"}


def run_schemathesis(bouncer, direct):
    environment = dict(os.environ, **service_settings(bouncer, direct), ST_MAX_EXAMPLES=os.environ.get("PGBOUNCER_ST_MAX_EXAMPLES", "60"))
    started = time.monotonic()
    done = subprocess.run(["bash", os.path.join(ROOT, "scripts", "schemathesis.sh")], env=environment, capture_output=True, text=True)
    summary = [line for line in done.stdout.splitlines() if line.startswith("schemathesis: ")]
    if done.returncode != 0:
        raise CheckFailed(f"schemathesis through PgBouncer failed (exit {done.returncode}):\n{done.stdout[-6000:]}\n{done.stderr[-3000:]}")
    log(f"schemathesis through PgBouncer: {'; '.join(summary)} ({time.monotonic() - started:.0f} s)")


def fresh_database(server_url):
    """A new database on DATABASE_URL's server, so the migrations run through PgBouncer too."""
    name = f"order_status_pgbouncer_{uuid.uuid4().hex[:8]}"
    psql(database_on(server_url, "postgres"), f"CREATE DATABASE {name}")
    return database_on(server_url, name), name


def database_on(url, name):
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


def main():
    server = database_url()
    direct, database = fresh_database(server)
    bouncer = PgBouncer(direct)
    service = None
    try:
        bouncer.start()
        version = subprocess.run([bouncer.binary, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
        service = ServiceProcess(settings=service_settings(bouncer, direct), name="order-status")
        service.start()
        log(f"{version} on 127.0.0.1:{bouncer.port} (pool_mode transaction, config from deploy/pgbouncer/pgbouncer.ini in {bouncer.directory}) "
            f"-> PostgreSQL, database {database} (new: migrated through PgBouncer); order-status on {service.base_url}")
        check_connections(bouncer, direct, service)
        order_id = check_rest(service.base_url)
        check_stream_and_replay(service.base_url, order_id)
        check_long_poll(service.base_url, order_id)
        check_feed(service.base_url)
        check_concurrent_changes(service.base_url)
        servers = [server for server in bouncer.show("SERVERS") if server["database"] == "order_status"]
        clients = [client for client in bouncer.show("CLIENTS") if client["database"] == "order_status"]
        log(f"PgBouncer served {len(clients)} client connection(s) of the service over {len(servers)} server connection(s)")
        service.stop()
        check_prepared_statements_are_named_in_the_log(bouncer, direct)
        run_schemathesis(bouncer, direct)
        log("passed")
        return 0
    except Exception as failure:  # noqa: BLE001 - every failure is reported with the logs, then cleaned up
        log(f"FAILED: {failure}" if isinstance(failure, CheckFailed) else f"FAILED: {traceback.format_exc()}")
        if service is not None:
            log(f"--- {service.name} log ---\n{service.log_tail()}")
        log(f"--- pgbouncer.log ---\n{bouncer.log_tail()}")
        return 1
    finally:
        if service is not None:
            service.stop()
            service.remove_log()
        bouncer.stop()
        bouncer.remove()
        psql(database_on(server, "postgres"), f"DROP DATABASE IF EXISTS {database} WITH (FORCE)", check_status=False)


if __name__ == "__main__":
    raise SystemExit(main())
