#!/usr/bin/env bash
# The scale-out tests' servers: a real PostgreSQL 15 and a real S3 implementation (OpenStack
# Swift with its s3api middleware, plus memcached), each on free local ports, all state in
# one folder. Run as root (CI is); PostgreSQL runs as the postgres user.
#
#   scripts/test-services.sh start DIR   # start both; writes DIR/env (source it)
#   scripts/test-services.sh stop DIR    # stop both (and remove DIR)
#
# DIR/env exports STRATA_TEST_PG (postgres://strata:...@127.0.0.1:PORT/strata),
# STRATA_TEST_S3 (s3://strata-test) and the usual AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY / AWS_REGION for it, and STRATA_TEST_SERVICES=DIR (the tests restart
# PostgreSQL through `restart-pg DIR`, and take the S3 endpoint away and back with
# `s3-down DIR` / `s3-up DIR`: the proxy stops, so connections are refused, then it starts again
# on the same port).
set -euo pipefail
cmd=${1:?start|stop|restart-pg|s3-down|s3-up DIR}
dir=${2:?state folder}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}

# Swift's default is a worker per core; at most 4 here (each is a Python process of ~50 MB)
workers=$(nproc)
[ "$workers" -gt 4 ] && workers=4

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_pg() {
  local d=$dir/pg port
  port=$(free_port)
  mkdir -p "$d"
  chown postgres "$d"
  su postgres -s /bin/sh -c "'$PGBIN/initdb' -D '$d/data' -U postgres -E UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256" >"$d/initdb.log"
  su postgres -s /bin/sh -c "'$PGBIN/pg_ctl' -D '$d/data' -l '$d/log' -w -t 60 -o \"-p $port -k '$d' -c listen_addresses=127.0.0.1 -c max_connections=300\" start" >/dev/null
  su postgres -s /bin/sh -c "'$PGBIN/psql' -h '$d' -p $port -U postgres -v ON_ERROR_STOP=1 -q" <<SQL
CREATE ROLE strata LOGIN PASSWORD 'strata-test';
CREATE DATABASE strata OWNER strata TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C';
SQL
  echo "$port" >"$d/port"
  echo "export STRATA_TEST_PG=postgres://strata:strata-test@127.0.0.1:$port/strata" >>"$dir/env"
}

restart_pg() {
  su postgres -s /bin/sh -c "'$PGBIN/pg_ctl' -D '$dir/pg/data' -l '$dir/pg/log' -w -t 60 -m fast restart" >/dev/null
}

stop_pg() {
  [ -d "$dir/pg/data" ] || return 0
  su postgres -s /bin/sh -c "'$PGBIN/pg_ctl' -D '$dir/pg/data' -w -t 60 -m fast stop" >/dev/null 2>&1 || true
}

conf() { # conf FILE SERVER PORT [APP-OPTIONS]
  cat >"$1" <<EOF
[DEFAULT]
devices = $dir/swift/devices
mount_check = false
bind_ip = 127.0.0.1
bind_port = $3
workers = $workers
user = root
swift_dir = $dir/swift/etc
log_level = WARNING
recon_cache_path = $dir/swift/cache
# Swift refuses every write (507, which s3api answers as 503 "Please reduce your request rate")
# once the disk is 99% full by default: a CI machine with a few GB free is not a full disk
fallocate_reserve = 0

[pipeline:main]
pipeline = $2-server

[app:$2-server]
use = egg:swift#$2
${4:-}
EOF
}

start_swift() {
  local s=$dir/swift ap cp op pp mp
  mkdir -p "$s/etc" "$s/devices/d1" "$s/cache" "$s/run"
  ap=$(free_port); cp=$(free_port); op=$(free_port); pp=$(free_port); mp=$(free_port)
  for ring in account:$ap container:$cp object:$op; do
    swift-ring-builder "$s/etc/${ring%%:*}.builder" create 6 1 1 >/dev/null
    swift-ring-builder "$s/etc/${ring%%:*}.builder" add "r1z1-127.0.0.1:${ring##*:}/d1" 1 >/dev/null
    swift-ring-builder "$s/etc/${ring%%:*}.builder" rebalance >/dev/null || true
  done
  conf "$s/etc/account-server.conf" account "$ap"
  conf "$s/etc/container-server.conf" container "$cp"
  # tuned as a deployer serving large objects would (bench/README.md "scale"): 1 MiB reads and
  # writes instead of 64 KiB (fewer trips through Python per MB), and packs kept in the page
  # cache after a GET (by default the object server drops every object over 5 MiB from it, so
  # each cold checkout read its packs from the disk again)
  conf "$s/etc/object-server.conf" object "$op" "disk_chunk_size = 1048576
network_chunk_size = 1048576
keep_cache_private = true
keep_cache_size = 1073741824"
  cat >"$s/etc/proxy-server.conf" <<EOF
[DEFAULT]
bind_ip = 127.0.0.1
bind_port = $pp
workers = $workers
user = root
swift_dir = $s/etc
log_level = WARNING

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
object_chunk_size = 1048576
client_chunk_size = 1048576
account_autocreate = true
allow_account_management = true

[filter:s3api]
use = egg:swift#s3api
location = us-east-1

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:$mp

[filter:catch_errors]
use = egg:swift#catch_errors
[filter:gatekeeper]
use = egg:swift#gatekeeper
[filter:healthcheck]
use = egg:swift#healthcheck
[filter:proxy-logging]
use = egg:swift#proxy_logging
[filter:listing_formats]
use = egg:swift#listing_formats
[filter:copy]
use = egg:swift#copy
[filter:slo]
use = egg:swift#slo
[filter:dlo]
use = egg:swift#dlo
EOF
  [ -f /etc/swift/swift.conf ] || { mkdir -p /etc/swift; printf '[swift-hash]\nswift_hash_path_suffix = strata-test\nswift_hash_path_prefix = strata-test\n[storage-policy:0]\nname = Policy-0\ndefault = yes\n' >/etc/swift/swift.conf; }
  memcached -d -u root -l 127.0.0.1 -p "$mp" -U 0 -m 64 -P "$s/run/memcached.pid"
  for srv in account container object proxy; do
    setsid "swift-$srv-server" "$s/etc/$srv-server.conf" >"$s/$srv.log" 2>&1 </dev/null &
    echo $! >"$s/run/$srv.pid"
  done
  local i
  for i in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$pp/healthcheck" >/dev/null 2>&1 && break
    sleep 0.2
  done
  # the bucket, through Swift's own API (a container is a bucket)
  local hdr url tok
  for i in $(seq 1 50); do
    hdr=$(curl -s -D - -o /dev/null -H 'X-Auth-User: test:tester' -H 'X-Auth-Key: testing' "http://127.0.0.1:$pp/auth/v1.0" || true)
    url=$(printf '%s' "$hdr" | tr -d '\r' | sed -n 's/^X-Storage-Url: //Ip')
    tok=$(printf '%s' "$hdr" | tr -d '\r' | sed -n 's/^X-Auth-Token: //Ip')
    [ -n "$tok" ] && curl -sf -X PUT -H "X-Auth-Token: $tok" "$url/strata-test" -o /dev/null && break
    sleep 0.3
  done
  [ -n "$tok" ] || { echo "swift did not start:" >&2; tail -20 "$s"/*.log >&2; exit 1; }
  echo "$pp" >"$s/port"
  cat >>"$dir/env" <<EOF
export STRATA_TEST_S3=s3://strata-test
export AWS_ENDPOINT_URL=http://127.0.0.1:$pp
export AWS_ACCESS_KEY_ID=test:tester
export AWS_SECRET_ACCESS_KEY=testing
export AWS_REGION=us-east-1
EOF
}

s3_down() {
  local f=$dir/swift/run/proxy.pid pid
  [ -f "$f" ] || { echo "no swift proxy in $dir" >&2; exit 1; }
  pid=$(cat "$f")
  # swift's proxy forks workers: stop the whole process group it leads (setsid)
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$(cat "$dir/swift/port")/healthcheck" || return 0
    sleep 0.1
  done
  echo "swift proxy still answers" >&2
  exit 1
}

s3_up() {
  local s=$dir/swift i
  setsid swift-proxy-server "$s/etc/proxy-server.conf" >>"$s/proxy.log" 2>&1 </dev/null &
  echo $! >"$s/run/proxy.pid"
  for i in $(seq 1 150); do
    curl -sf "http://127.0.0.1:$(cat "$s/port")/healthcheck" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "swift proxy did not come back" >&2
  tail -20 "$s/proxy.log" >&2
  exit 1
}

stop_swift() {
  local s=$dir/swift f
  [ -d "$s/run" ] || return 0
  for f in "$s"/run/*.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
}

case $cmd in
  start)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # PostgreSQL runs as the postgres user: it must reach its folder inside DIR (mktemp -d makes 0700)
    chmod 755 "$dir"
    : >"$dir/env"
    echo "export STRATA_TEST_SERVICES=$dir" >>"$dir/env"
    start_pg
    start_swift
    ;;
  restart-pg) restart_pg ;;
  s3-down) s3_down ;;
  s3-up) s3_up ;;
  stop)
    stop_swift
    stop_pg
    rm -rf "$dir"
    ;;
  *) echo "usage: $0 start|stop|restart-pg|s3-down|s3-up DIR" >&2; exit 2 ;;
esac
