#!/bin/sh
# Run by Patroni once, on the node that bootstraps the cluster, with a superuser connection string
# as $1: the service's own role and database (it applies its migrations itself at startup).
# Replace the example password, and DATABASE_URL's with it.
set -eu
psql "$1" -v ON_ERROR_STOP=1 <<'SQL'
CREATE ROLE order_status LOGIN PASSWORD 'order-status-example';
CREATE DATABASE order_status OWNER order_status;
SQL
