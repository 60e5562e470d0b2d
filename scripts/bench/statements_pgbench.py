"""PostgreSQL's CPU per status change for the store's ChangeStatus statement, named and prepared
(pgbench -M prepared) against unnamed (-M extended: Parse, Bind, Execute each time, as
DATABASE_STATEMENTS=unnamed sends it), directly and through PgBouncer (deploy/pgbouncer). One
client, so the backend's CPU is the statement's alone; the statement's text comes from
OrderStatements.swift (the service's constants filled in, colons in literals spelled chr(58)
for pgbench). CPU from /proc: the postmaster of PGDATA and its children, reaped ones included.

  DATABASE_URL=postgres://postgres@127.0.0.1:PORT/db PGDATA=/path/to/cluster \\
      python3 scripts/bench/statements_pgbench.py [rounds] [transactions]"""

import glob
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from live_service import ROOT, database_url  # noqa: E402
from pgbouncer_statements import cluster_ticks, ticks  # noqa: E402
from pgbouncer_test import PASSWORD, PgBouncer  # noqa: E402

ORDERS = 1000


def change_status_script():
    source = open(os.path.join(ROOT, "Sources", "OrderStatusService", "Storage", "OrderStatements.swift")).read()
    sql = re.search(r'struct ChangeStatus.*?static let sql = """\n(.*?)"""', source, re.S).group(1)
    time_format = "to_char({} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24' || chr(58) || 'MI' || chr(58) || 'SS.MS\"Z\"')"
    order = lambda a: ", ".join([f"{a}.id", f"{a}.status", f"{a}.version", time_format.format(f"{a}.created_at"),  # noqa: E731
                                 time_format.format(f"{a}.updated_at"), f"{a}.last_event_id", f"{a}.metadata::text"])
    event = lambda a: ", ".join([f"{a}.id", f"{a}.order_id", f"{a}.status", f"{a}.previous_status", f"{a}.version",  # noqa: E731
                                 time_format.format(f"{a}.occurred_at"), f"{a}.metadata::text"])
    notify = ("SELECT pg_notify((SELECT name FROM notification_channel), CASE WHEN octet_length(p.payload) < 8000 THEN p.payload "
              "ELSE n.id || chr(58) || n.order_id END) FROM new_event n, LATERAL (SELECT concat_ws(E'\\n', n.id || chr(58) || n.order_id, "
              "n.status, coalesce(n.previous_status, ''), n.version, " + time_format.format("n.occurred_at")
              + ", coalesce(n.metadata::text, '')) AS payload) p")
    sql = sql.replace('\\(ChangeNotification.notifySQL(from: "new_event"))', notify)
    sql = sql.replace('\\(SQL.orderColumns("o"))', order("o")).replace('\\(SQL.eventColumns("e"))', event("e"))
    # Every transaction writes: the target is among the sources, as for the load tool's writers.
    sql = (sql.replace("$1", "('pgb-' || :n)").replace("$2", "'paid'").replace("$3::text[]", "'{pending,paid}'::text[]")
           .replace("$4::int8[]", "NULL::int8[]").replace("$5::json", "NULL::json"))
    if "\\(" in sql or "$" in sql:
        raise SystemExit("OrderStatements.ChangeStatus changed shape; update this script")
    return "\\set n random(1, :orders)\n" + " ".join(line.strip() for line in sql.strip().splitlines()) + ";\n"


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    transactions = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    direct, pgdata = database_url(), os.environ["PGDATA"]
    pgbench = os.environ.get("PGBENCH") or sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"))[-1]
    script = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
    script.write(change_status_script())
    script.close()
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", direct, "-c",
                    "INSERT INTO orders (id, status, version, created_at, updated_at, last_event_id) "
                    f"SELECT 'pgb-' || n, 'pending', 1, now(), now(), 0 FROM generate_series(1, {ORDERS}) n ON CONFLICT (id) DO NOTHING"], check=True)
    bouncer = PgBouncer(direct).start()
    tick = os.sysconf("SC_CLK_TCK")
    try:
        for round_number in range(1, rounds + 1):
            for label, mode, url in (("prepared, direct", "prepared", direct), ("unnamed, direct", "extended", direct),
                                     ("unnamed, PgBouncer", "extended", bouncer.url())):
                database, pooler = cluster_ticks(pgdata), ticks(bouncer.pid, False)
                done = subprocess.run([pgbench, "-n", "-M", mode, "-c", "1", "-t", str(transactions), "-D", f"orders={ORDERS}", "-f", script.name, url],
                                      capture_output=True, text=True, env=dict(os.environ, PGPASSWORD=PASSWORD))
                # A direct session's backend exits with pgbench; its CPU counts once the postmaster reaps it.
                time.sleep(1.5)
                database, pooler = cluster_ticks(pgdata) - database, ticks(bouncer.pid, False) - pooler
                tps = re.search(r"^tps = ([0-9.]+)", done.stdout, re.M)
                if done.returncode != 0 or not tps:
                    raise SystemExit(f"pgbench {label} failed:\n{done.stdout}\n{done.stderr}")
                print(f"{label:20} round {round_number}: PostgreSQL {database / tick * 1e6 / transactions:5.0f} µs, "
                      f"PgBouncer {pooler / tick * 1e6 / transactions:3.0f} µs per change, {float(tps.group(1)):5.0f} tps", flush=True)
    finally:
        bouncer.stop()
        bouncer.remove()
        os.unlink(script.name)


if __name__ == "__main__":
    main()
