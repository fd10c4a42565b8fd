"""Admin pages at fleet scale: 100,000 agents and 2,000,000 tasks in PostgreSQL, every page under 500 ms.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/aegis_adminscale .venv/bin/python bench/admin_scale.py
        [--reuse] [--runs 5] [--only tasks.task] [--explain] [--agents 100000 --tasks 2000000 ...]

The database is ``<name>_adminscale`` from ``DATABASE_URL`` (the name itself when it already
ends with ``adminscale``; nothing else is ever dropped). It is dropped, created, migrated and
seeded with set-based SQL (``bench/_admin_seed.py``), then ANALYZEd. ``--reuse`` keeps a
database seeded with the same sizes and only migrates it (new indexes are built then).

Then, logged in as a superuser through ``django.test.Client`` with production settings
(``DEBUG`` off), it GETs every page ``bench/_admin_pages.py`` finds: the dashboard, every
registered model's changelist, with each list filter, a search, page 50, change pages and
custom admin views. Each URL is requested once to warm up, then ``--runs`` times: median and
p95 in ms, the SQL queries of one more request (count and the slowest), FAIL when the median
passes 500 ms. Changelists are also timed on a stock twin (Django's ``Paginator``,
``show_full_result_count = True``) in the same run: "stock/capped" is that speed-up.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._admin_seed import OPERATORS, Sizes, seed  # noqa: E402
from bench._infra import median, percentile  # noqa: E402

LIMIT_MS = 500.0
SEED_MARK = "aegis_admin_scale_seed"  # a comment on the agents table: the sizes a database was seeded with


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed requests per URL (after one warm-up)")
    parser.add_argument("--reuse", action="store_true", help="keep a database already seeded with these sizes")
    parser.add_argument("--only", default="", help="time only pages whose label contains this text")
    parser.add_argument("--no-stock", action="store_true", help="skip the stock-paginator baseline")
    parser.add_argument("--explain", action="store_true", help="EXPLAIN ANALYZE the slowest query of slow pages")
    parser.add_argument("--seed-only", action="store_true", help="create and seed the database, time nothing")
    defaults = Sizes()
    for field in ("agents", "jobs", "tasks", "audit"):
        parser.add_argument(f"--{field}", type=int, default=getattr(defaults, field))
    args = parser.parse_args()
    sizes = Sizes(agents=args.agents, jobs=args.jobs, tasks=args.tasks, audit=args.audit)

    url, fresh = _database(sizes, args.reuse)
    _setup_django(url)
    from django.db import connection

    if fresh:
        _seed(sizes)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
    print(f"PostgreSQL {version}, {url.rpartition('/')[2]}: {sizes}, runs={args.runs}", flush=True)
    if not args.seed_only:
        _run_pages(args)


def _database(sizes: Sizes, reuse: bool) -> tuple[str, bool]:
    """The benchmark's own database; whether it must be seeded."""
    import psycopg

    base, _, name = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/aegis").rpartition("/")
    if not name.endswith("adminscale"):
        name = f"{name}_adminscale"
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if reuse and exists and _seeded_with(f"{base}/{name}") == repr(sizes):
            return f"{base}/{name}", False
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}", True


def _seeded_with(url: str) -> str | None:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT obj_description('agents'::regclass, 'pg_class')").fetchone()
    return row[0] if row else None


def _setup_django(url: str) -> None:
    os.environ.update(
        DJANGO_SETTINGS_MODULE="aegis_site.settings",
        DATABASE_URL=url,
        DEBUG="false",  # production settings: no query log, cached templates
        SECRET_KEY=secrets.token_urlsafe(50),
        ALLOWED_HOSTS="testserver",
        LOG_LEVEL="ERROR",  # slow_request and 405 warnings would drown the table
        STATIC_ROOT=str(ROOT / "var" / "static"),
    )
    warnings.filterwarnings("ignore", message="No directory at")  # WhiteNoise: nothing collected, nothing served
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        sys.exit("This benchmark measures PostgreSQL: set DATABASE_URL=postgres://...")
    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    print(f"migrated in {time.perf_counter() - started:.1f} s", flush=True)


def _seed(sizes: Sizes) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    users = get_user_model()._default_manager
    users.create_superuser("bench", "bench@example.com", secrets.token_urlsafe(16))
    for username in OPERATORS:
        users.create_user(username, is_staff=True)
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        seed(cursor, sizes)
        cursor.execute(f"COMMENT ON TABLE agents IS '{sizes!r}'")
    with connection.cursor() as cursor:
        analyzed = time.perf_counter()
        cursor.execute("VACUUM ANALYZE")
        print(f"  vacuum analyze {time.perf_counter() - analyzed:6.1f} s", flush=True)
    print(f"seeded in {time.perf_counter() - started:.1f} s", flush=True)


def _run_pages(args: argparse.Namespace) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    from bench._admin_pages import discover, install_stock_site

    install_stock_site()
    logging.getLogger("django.request").setLevel(logging.ERROR)  # a 405 to a GET is expected, not news
    client = Client(raise_request_exception=False)  # a broken page is a 500 row, not the end of the run
    client.force_login(get_user_model()._default_manager.get(username="bench"))
    pages = [page for page in discover(client) if args.only in page.label]
    print(f"{len(pages)} pages; FAIL = median over {LIMIT_MS:.0f} ms", flush=True)
    header = f"{'page':<62}{'status':>7}{'median':>9}{'p95':>9}{'queries':>8}{'slowest':>9}{'stock':>9}{'ratio':>7}"
    print(header + "\n" + "-" * len(header), flush=True)
    results = []
    for page in pages:
        if client.get(page.url, secure=True).status_code == 405:
            print(f"{page.label[:61]:<62}{405:>7}  (takes only POST: nothing to render)", flush=True)
            continue
        measured = _measure(client, page.url, args.runs)
        stock = _measure(client, page.stock_url, args.runs) if page.stock_url and not args.no_stock else None
        results.append((page, measured, stock))
        print(_row(page.label, measured, stock), flush=True)
        if args.explain and measured["median"] > LIMIT_MS / 5:
            _explain(measured)
    _live_feed(args.runs)
    _summary(results)


def _measure(client: Any, url: str, runs: int) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    response = client.get(url, secure=True)  # warm-up: template loading, caches
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        response = client.get(url, secure=True)
        timings.append((time.perf_counter() - started) * 1000)
    with CaptureQueriesContext(connection) as captured:
        client.get(url, secure=True)
    queries = sorted(captured.captured_queries, key=lambda q: float(q["time"]), reverse=True)
    slowest = queries[0] if queries else {"time": "0", "sql": ""}
    return {
        "status": response.status_code,
        "median": median(timings),
        "p95": percentile(timings, 95),
        "queries": len(captured.captured_queries),
        "slowest_ms": float(slowest["time"]) * 1000,
        "slowest_sql": slowest["sql"],
        "sql_ms": sum(float(q["time"]) for q in queries) * 1000,
        "top": [(float(q["time"]) * 1000, q["sql"]) for q in queries[:3]],
    }


def _row(label: str, measured: dict[str, Any], stock: dict[str, Any] | None) -> str:
    stock_ms = f"{stock['median']:9.0f}" if stock else f"{'':9}"
    ratio = f"{stock['median'] / measured['median']:7.1f}" if stock and measured["median"] else f"{'':7}"
    fail = "  FAIL" if measured["median"] > LIMIT_MS else ""
    return (
        f"{label[:61]:<62}{measured['status']:>7}{measured['median']:9.0f}{measured['p95']:9.0f}"
        f"{measured['queries']:>8}{measured['slowest_ms']:9.0f}{stock_ms}{ratio}{fail}"
    )


def _explain(measured: dict[str, Any]) -> None:
    """Where a slow page's time goes: SQL total, its three slowest queries, the plan of the slowest."""
    from django.db import connection

    print(f"    SQL {measured['sql_ms']:.0f} ms of {measured['median']:.0f} ms (the rest is Python and templates)")
    for ms, sql in measured["top"]:
        print(f"    {ms:7.1f} ms  {sql[:300]}")
    sql = measured["slowest_sql"]
    if measured["slowest_ms"] < 20 or not sql.lstrip().upper().startswith("SELECT"):
        return
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql)
        plan = [row[0] for row in cursor.fetchall()]
    for line in plan[:14]:
        print(f"      {line}")


def _live_feed(runs: int) -> None:
    """The live updates' once-a-second poll (``ops.live.feed.read_watermarks``), when the project has one."""
    try:
        from ops.live.feed import read_watermarks
    except ImportError:
        return
    timings = []
    for _ in range(runs * 4):
        started = time.perf_counter()
        read_watermarks()
        timings.append((time.perf_counter() - started) * 1000)
    print(
        f"{'live feed watermarks (every second, per web process)':<62}{'':>7}{median(timings):9.1f}"
        f"{percentile(timings, 95):9.1f}{1:>8}"
    )


def _summary(results: list[tuple[Any, dict[str, Any], dict[str, Any] | None]]) -> None:
    failed = [(page, m) for page, m, _ in results if m["median"] > LIMIT_MS]
    errors = [(page, m) for page, m, _ in results if m["status"] >= 500]
    ratios = [s["median"] / m["median"] for _, m, s in results if s and m["median"]]
    worst = sorted(results, key=lambda item: item[1]["median"], reverse=True)[:5]
    print("\nsummary")
    print(f"  pages timed: {len(results)}, over {LIMIT_MS:.0f} ms: {len(failed)}, server errors: {len(errors)}")
    if ratios:
        print(
            f"  stock/capped changelists: median {median(ratios):.1f}x, min {min(ratios):.1f}x, max {max(ratios):.1f}x"
        )
    print("  slowest pages (median ms):")
    for page, measured, _ in worst:
        print(f"    {measured['median']:8.0f}  {page.label}  {page.url}")
    for page, measured in failed:
        print(f"  FAIL {measured['median']:.0f} ms  {page.label}  {page.url}")


if __name__ == "__main__":
    main()
