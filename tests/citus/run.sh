#!/usr/bin/env bash
# `make test-citus`: the scale-out part of the suite against a throwaway Citus cluster on loopback
# (a coordinator on 127.0.0.1:9700 and workers on 9701/9702), created from scratch and stopped after.
#
# Citus is in no package registry: its source and the scripts that build it into Debian's
# PostgreSQL 15 and start the cluster live beside the repository (../shared/citus), or wherever
# TENANTRY_CITUS_SOURCE points. Building and running the cluster need root (or passwordless sudo).
# Where that is impossible the run says so and is skipped, unless TENANTRY_REQUIRE_CITUS=1 makes
# it a failure. A failing test always fails.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)

skip() {
    echo "test-citus: SKIPPED: $*" >&2
    [ "${TENANTRY_REQUIRE_CITUS:-}" = 1 ] && exit 1
    exit 0
}

src=""
for candidate in "${TENANTRY_CITUS_SOURCE:-}" "$root/../shared/citus" /work/shared/citus; do
    if [ -n "$candidate" ] && [ -f "$candidate/cluster.sh" ]; then src=$(cd "$candidate" && pwd); break; fi
done
[ -n "$src" ] || skip "no Citus source found (set TENANTRY_CITUS_SOURCE to the directory of build.sh and cluster.sh)"
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    skip "building Citus and running its cluster need root or passwordless sudo"
fi
[ -f /usr/lib/postgresql/15/lib/citus.so ] || command -v apt-get >/dev/null ||
    skip "Citus is built against Debian's PostgreSQL 15, installed with apt-get (not found)"

if [ ! -f /usr/lib/postgresql/15/lib/citus.so ]; then
    echo "test-citus: building Citus from $src (about a minute)"
    log=$(mktemp)
    # A machine that cannot build it (no package mirror, no compiler) is skipped with the reason.
    "${as_root[@]}" bash "$src/build.sh" >"$log" 2>&1 || { tail -20 "$log" >&2; skip "Citus did not build (log above)"; }
fi
echo "test-citus: Citus from $src; (re)creating the cluster"
"${as_root[@]}" bash "$src/cluster.sh" create
stop() { "${as_root[@]}" bash "$src/cluster.sh" stop >/dev/null 2>&1 || true; }
trap stop EXIT

# What matters on Citus: provisioning (spares included), isolation at the GraphQL and SQL levels
# (tenant roles log in, also directly on workers), copy and migration across workers, moves under
# writes, migrate-all, usage sizes, realtime, retention, the tenant lifecycle, and capacity (timeouts,
# per-tenant shares) and limits under concurrency across two workers, and devices joining.
cd "$root"
TENANTRY_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:9700/postgres TENANTRY_TENANT_ROLES_LOGIN=1 \
    .venv/bin/pytest -p no:cacheprovider "$@" \
    tests/test_provisioning.py tests/test_isolation.py tests/test_tenants.py \
    tests/test_tenant_lifecycle.py tests/test_copy.py tests/test_migrate.py tests/test_placement.py \
    tests/test_usage.py tests/test_realtime.py tests/test_retention.py tests/test_data.py tests/test_access_gate.py \
    tests/test_changes.py tests/test_webhooks.py tests/test_shares.py tests/test_capacity.py tests/test_limits.py \
    tests/test_idempotency.py tests/test_claims.py
