"""What each listening instance costs PostgreSQL, and the write ceiling with NOTIFY (issue 14, item 5).
Driven by scripts/listener-capacity.sh, which starts the private cluster this reads. Standard library only.

Writers are pgbench sessions running the service's own status change (scripts/bench/status-change.sql:
lock, update, event insert, pg_notify, one round trip), so that PostgreSQL's work per change is the
service's and the writer costs nothing in the service. Listeners are real `order-status serve`
instances, each holding its one LISTEN connection. CPU is utime+stime from /proc/<pid>/stat of the
cluster's processes (the postmaster with the children it reaped, and each live child), over a window
inside each pgbench run, split by pg_stat_activity's application_name into the writing backends,
the listener backends and the rest.

Phases (each point repeated LISTENER_ROUNDS times; the ladder goes up, then down, so drift falls on every count):
  ceiling   0 listeners, pgbench flat out with 1, 4 and 16 clients, with and without pg_notify,
            with the throwaway cluster's settings (fsync off) and durable ones (fsync, synchronous_commit on)
  ladder    1, 2, 4, 8, 16 listeners (and 0): a fixed rate (cost per change), then flat out (ceiling)
"""

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from live_service import ROOT, CheckFailed, ServiceProcess, database_url, say  # noqa: E402

NAME = "listener-capacity"
PGBIN = os.environ["PGBIN"]
PGDATA = os.environ["PGDATA_DIR"]
TICK_US = 1e6 / os.sysconf("SC_CLK_TCK")
ROUNDS = int(os.environ.get("LISTENER_ROUNDS", "2"))
# The fixed rate of the cost points: low enough that a listener mostly wakes for each notification
# on its own (the dear case per notification; near the ceiling a wake-up reads several).
RATE = int(os.environ.get("LISTENER_RATE", "200"))
RATE_WINDOW = float(os.environ.get("LISTENER_RATE_SECONDS", "20"))
CEILING_WINDOW = float(os.environ.get("LISTENER_CEILING_SECONDS", "8"))
CEILING_CLIENTS = [int(c) for c in os.environ.get("LISTENER_CEILING_CLIENTS", "1 4 16").split()]
# pgbench sessions of the flat-out points with listeners: the bench's write pool.
LADDER_CLIENTS = int(os.environ.get("LISTENER_LADDER_CLIENTS", "8"))
LADDER = [int(n) for n in os.environ.get("LISTENER_COUNTS", "0 1 2 4 8 16").split()]
WARMUP = 3.0
# When set, every point's figures are appended to this file as one JSON object a line.
RAW = os.environ.get("LISTENER_RAW")
ORDERS = 20000
STATEMENT = os.path.join(ROOT, "scripts", "bench", "status-change.sql")


def psql(*commands):
    arguments = [os.path.join(PGBIN, "psql"), "-X", "-q", "-tA", "-F", " ", "-v", "ON_ERROR_STOP=1", database_url()]
    for command in commands:
        arguments += ["-c", command]
    return subprocess.run(arguments, check=True, capture_output=True, text=True).stdout


def ticks(pid, with_children=False):
    """utime+stime of a process (with its reaped children's), in clock ticks; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is the state (field 3 of proc(5)): utime is field 14, so fields[11].
    own = int(fields[11]) + int(fields[12])
    return own + int(fields[13]) + int(fields[14]) if with_children else own


def cluster_ticks():
    """{pid: ticks} for every process of this cluster: the postmaster, counting the children it has
    reaped (exited backends, autovacuum workers), and each live child. Other clusters on the machine
    (other engineers', CI's) are not ours and are left out."""
    with open(os.path.join(PGDATA, "postmaster.pid")) as pidfile:
        postmaster = int(pidfile.readline())
    result = {postmaster: ticks(postmaster, with_children=True)}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                text = stat.read()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if int(fields[1]) == postmaster:
            result[int(entry)] = int(fields[11]) + int(fields[12])
    return result


def last_event_id():
    return int(psql("SELECT last_value FROM order_events_id_seq").strip() or 0)


def roles():
    """pid -> writer, listener or rest, from pg_stat_activity."""
    result = {}
    for line in psql("SELECT pid, coalesce(application_name, '') FROM pg_stat_activity").splitlines():
        pid, _, name = line.partition(" ")
        result[int(pid)] = {"pgbench": "writer", "order-status-listener": "listener"}.get(name, "rest")
    return result


def without_notify(directory):
    """The same statement with the payload still built but not notified: what NOTIFY itself costs."""
    with open(STATEMENT) as source:
        text = source.read()
    changed = text.replace("pg_notify((SELECT name FROM notification_channel), CASE", "length(CASE")
    if changed == text:
        raise CheckFailed(f"{STATEMENT} no longer has the pg_notify call this script removes")
    path = os.path.join(directory, "status-change-no-notify.sql")
    with open(path, "w") as target:
        target.write(changed)
    return path


def measure(script, clients, window, rate=None, services=()):
    """One pgbench run; CPU and changes over a window inside it. Returns a dict of figures."""
    arguments = [os.path.join(PGBIN, "pgbench"), "-n", "-M", "prepared", "-c", str(clients), "-j", str(min(clients, 2)),
                 "-T", str(int(WARMUP + window + 60)), "-D", f"orders={ORDERS}", "-f", script]
    if rate:
        arguments += ["-R", str(rate)]
    output = tempfile.TemporaryFile(mode="w+")
    pgbench = subprocess.Popen(arguments + [database_url()], stdout=output, stderr=subprocess.STDOUT)
    try:
        time.sleep(WARMUP)
        role = roles()
        if sum(1 for r in role.values() if r == "writer") != clients:
            raise CheckFailed(f"expected {clients} pgbench sessions, pg_stat_activity shows {role}")
        first_id, first_at = last_event_id(), time.monotonic()
        # Lets the two psql backends above exit and be reaped before the window opens.
        time.sleep(0.3)
        before = cluster_ticks()
        service_before = [ticks(s.process.pid) for s in services]
        client_before = ticks(pgbench.pid)
        started = time.monotonic()
        time.sleep(window)
        after = cluster_ticks()
        service_after = [ticks(s.process.pid) for s in services]
        client_after = ticks(pgbench.pid)
        ended = time.monotonic()
        last_id, last_at = last_event_id(), time.monotonic()
        # Its -T is only a backstop: on a loaded machine the psql calls above take seconds, and a
        # pgbench that ended inside the window would leave it without writes.
        if pgbench.poll() is not None:
            raise CheckFailed("pgbench ended before the window closed")
    finally:
        if pgbench.poll() is None:
            pgbench.terminate()
        pgbench.wait()
    output.seek(0)
    text = output.read()
    if "aborted" in text or "error" in text.lower():
        raise CheckFailed(f"pgbench failed:\n{text}")
    changes_per_s = (last_id - first_id) / (last_at - first_at)
    changes = changes_per_s * (ended - started)
    split = {"writer": 0, "listener": 0, "rest": 0}
    for pid in set(before) | set(after):
        split[role.get(pid, "rest")] += (after.get(pid) or 0) - (before.get(pid) or 0)
    per_change = {k: v * TICK_US / changes for k, v in split.items()}
    service_us = None
    if services:
        service_us = sum(a - b for a, b in zip(service_after, service_before)) * TICK_US / changes / len(services)
    figures = {
        "clients": clients,
        "rate": rate,
        "listeners": len(services),
        "changes": round(changes),
        "window_s": round(ended - started, 2),
        "ticks": split,
        "changes_per_s": changes_per_s,
        "writer_us": per_change["writer"],
        "listeners_us": per_change["listener"],
        "rest_us": per_change["rest"],
        "postgres_us": sum(per_change.values()),
        "pgbench_us": (client_after - client_before) * TICK_US / changes,
        "service_us": service_us,
        "load": open("/proc/loadavg").read().split()[0],
    }
    if RAW:
        with open(RAW, "a") as raw:
            raw.write(json.dumps(dict(figures, script=os.path.basename(script))) + "\n")
    return figures


def set_durable(durable):
    settings = ["fsync", "synchronous_commit", "full_page_writes"]
    if durable:
        psql(*[f"ALTER SYSTEM SET {s} = on" for s in settings], "SELECT pg_reload_conf()")
    else:
        psql(*[f"ALTER SYSTEM RESET {s}" for s in settings], "SELECT pg_reload_conf()")
    time.sleep(0.5)
    shown = psql("SHOW fsync").strip()
    if shown != ("on" if durable else "off"):
        raise CheckFailed(f"fsync is {shown} after the reload")


def spread(values, digits=0):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    low, high = min(values), max(values)
    text = f"{statistics.mean(values):.{digits}f}"
    return text if len(values) == 1 else f"{text} ({low:.{digits}f}-{high:.{digits}f})"


def reference_loop():
    started = time.perf_counter()
    sum(range(30_000_000))
    return f"{time.perf_counter() - started:.2f} s"


def result_line(kind, **fields):
    # The RESULT lines scripts/bench.sh collects into its table.
    print("RESULT " + kind + " " + " ".join(f"{k}={v}" for k, v in fields.items()), flush=True)


def main():
    reference_before = reference_loop()
    psql(f"""INSERT INTO orders (id, status, version, created_at, updated_at, last_event_id)
             SELECT 'pgb-' || n, 'pending', 1, now(), now(), 0 FROM generate_series(1, {ORDERS}) n
             ON CONFLICT (id) DO NOTHING""")
    scratch = tempfile.mkdtemp(prefix="listener-capacity-")
    plain = without_notify(scratch)
    services = []
    ceiling = {}
    ladder = {}
    try:
        # Ceiling: no listeners, so the figure is NOTIFY's own commit-time cost.
        for round_number in range(1, ROUNDS + 1):
            for durable in (False, True):
                set_durable(durable)
                for clients in CEILING_CLIENTS:
                    for notify in (True, False):
                        figures = measure(STATEMENT if notify else plain, clients, CEILING_WINDOW)
                        ceiling.setdefault((durable, clients, notify), []).append(figures)
                        say(NAME, f"ceiling round {round_number}: {'durable' if durable else 'fsync off'}, {clients} clients, "
                                  f"{'notify' if notify else 'no notify'}: {figures['changes_per_s']:.0f} changes/s, "
                                  f"PostgreSQL {figures['postgres_us']:.0f} us/change, load {figures['load']}")
            set_durable(False)
        # Ladder: up, then down, so the rounds see the machine's drift from both ends.
        order = []
        for round_number in range(1, ROUNDS + 1):
            order += [(round_number, n) for n in (LADDER if round_number % 2 else list(reversed(LADDER)))]
        for round_number, count in order:
            while len(services) < count:
                service = ServiceProcess(settings={"DATABASE_POOL_SIZE": "2", "LOG_LEVEL": "warning"},
                                         name=f"listener-{len(services) + 1}")
                services.append(service.start())
            while len(services) > count:
                services.pop().stop()
            # Every instance must be LISTENing before the window: its backend is what is measured.
            listening = int(psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'order-status-listener'").strip())
            if listening != count:
                time.sleep(1)
                listening = int(psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'order-status-listener'").strip())
            if listening != count:
                raise CheckFailed(f"{count} instances but {listening} listener sessions")
            fixed = measure(STATEMENT, 2, RATE_WINDOW, rate=RATE, services=services)
            flat = measure(STATEMENT, LADDER_CLIENTS, CEILING_WINDOW, services=services)
            ladder.setdefault(count, []).append((fixed, flat))
            say(NAME, f"ladder round {round_number}: {count} listeners: at {fixed['changes_per_s']:.0f}/s writer "
                      f"{fixed['writer_us']:.0f} us, listeners {fixed['listeners_us']:.0f} us, rest {fixed['rest_us']:.0f} us "
                      f"per change; flat out {flat['changes_per_s']:.0f} changes/s, PostgreSQL {flat['postgres_us']:.0f} us/change; "
                      f"instances {fixed['service_us'] or 0:.0f} us/notification; load {fixed['load']}")
    finally:
        for service in services:
            service.stop()
            service.remove_log()
        for name in os.listdir(scratch):
            os.unlink(os.path.join(scratch, name))
        os.rmdir(scratch)

    print()
    print(f"{NAME}: {time.strftime('%Y-%m-%dT%H:%MZ', time.gmtime())}, {os.cpu_count()} cores; reference loop "
          f"{reference_before} before, {reference_loop()} after; mean (min-max) of {ROUNDS} rounds")
    print()
    print(f"Write ceiling, 0 listeners, pgbench flat out ({CEILING_WINDOW:g} s windows)")
    print(f"{'settings':<10} {'clients':>7} {'notify c/s':>20} {'no notify c/s':>20} {'PG us/change notify':>22} {'no notify':>18}")
    for durable in (False, True):
        for clients in CEILING_CLIENTS:
            on, off = ceiling[(durable, clients, True)], ceiling[(durable, clients, False)]
            print(f"{'durable' if durable else 'fsync off':<10} {clients:>7} {spread([f['changes_per_s'] for f in on]):>20} "
                  f"{spread([f['changes_per_s'] for f in off]):>20} {spread([f['postgres_us'] for f in on]):>22} "
                  f"{spread([f['postgres_us'] for f in off]):>18}")
            for notify, runs in ((1, on), (0, off)):
                result_line("ceiling", durable=int(durable), clients=clients, notify=notify,
                            changes_per_s=spread([f["changes_per_s"] for f in runs]).split()[0],
                            postgres_cpu_us=spread([f["postgres_us"] for f in runs]).split()[0])
    print()
    print(f"PostgreSQL CPU per change at {RATE} changes/s (2 pgbench sessions, {RATE_WINDOW:g} s windows), "
          f"and flat out with {LADDER_CLIENTS} sessions")
    header = (f"{'listeners':>9} {'writer us':>14} {'listeners us':>14} {'per listener':>14} {'rest us':>12} {'total us':>14} "
              f"{'instance us/notif':>18} {'flat-out c/s':>18} {'flat-out PG us':>16}")
    print(header)
    for count in LADDER:
        runs = ladder[count]
        fixed = [f for f, _ in runs]
        flat = [f for _, f in runs]
        per_listener = [f["listeners_us"] / count for f in fixed] if count else []
        print(f"{count:>9} {spread([f['writer_us'] for f in fixed]):>14} {spread([f['listeners_us'] for f in fixed]):>14} "
              f"{spread(per_listener, 1):>14} {spread([f['rest_us'] for f in fixed]):>12} {spread([f['postgres_us'] for f in fixed]):>14} "
              f"{spread([f['service_us'] for f in fixed]):>18} {spread([f['changes_per_s'] for f in flat]):>18} "
              f"{spread([f['postgres_us'] for f in flat]):>16}")
        result_line("listeners", n=count, writer_us=f"{statistics.mean(f['writer_us'] for f in fixed):.0f}",
                    listeners_us=f"{statistics.mean(f['listeners_us'] for f in fixed):.0f}",
                    rest_us=f"{statistics.mean(f['rest_us'] for f in fixed):.0f}",
                    flat_changes_per_s=f"{statistics.mean(f['changes_per_s'] for f in flat):.0f}")
    # Break-even: least squares of writer and listener cost against the count; the listeners cost
    # more than the writes once slope_l * N > writer_0 + slope_w * N.
    points = [(count, f) for count in LADDER for f, _ in ladder[count]]
    if len({count for count, _ in points}) >= 2:
        def fit(key):
            xs = [c for c, _ in points]
            ys = [f[key] for _, f in points]
            mx, my = statistics.mean(xs), statistics.mean(ys)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
            return my - slope * mx, slope
        writer0, writer_slope = fit("writer_us")
        listener0, listener_slope = fit("listeners_us")
        print()
        print(f"fit: writer {writer0:.0f} + {writer_slope:.1f} x N us, listeners {listener0:.0f} + {listener_slope:.1f} x N us per change")
        if listener_slope > writer_slope:
            print(f"{NAME}: the listeners cost more than the writing backends from N = "
                  f"{(writer0 - listener0) / (listener_slope - writer_slope):.1f} listening instances")
    print(f"{NAME}: passed")


if __name__ == "__main__":
    # SIGTERM (the wrapper's cleanup) unwinds like an error, so the instances and pgbench are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        main()
    except CheckFailed as failure:
        print(f"{NAME}: FAILED: {failure}", flush=True)
        sys.exit(1)
