"""Notifications (issue 18): events/s delivered to a local webhook receiver by 1..N notifiers, and the delay.

    .venv/bin/python bench/notifications.py [--replicas 1,2,3] [--events 2000] [--rate 20] [--seconds 10]
        [--receiver-ms 0] [--profile FILE] [--quick]

Separate processes with the production defaults (the PostgreSQL pool on, ``DEBUG`` off):
``manage.py run_notifier`` replicas against a scratch database ``<name>_bench_notify`` (from
``DATABASE_URL``; created, migrated, dropped here), and a webhook receiver in this process
(``http.server``, one thread per request) that checks each signature and notes the
``webhook-id`` and the arrival time. The notifiers get ``NOTIFY_ALLOW_PRIVATE_ADDRESSES=true``:
the receiver listens on 127.0.0.1, which the default refuses.

1. Baseline: the same signed bodies POSTed to the receiver straight from this process by
   4 threads with one ``httpx.Client`` each (what sending costs without the database): the
   ceiling of receiver and HTTP on this machine.
2. Throughput, per replica count: ``--events`` events written in one transaction (through
   ``notify.outbox.emit``, with one webhook subscription: a backlog the notifiers see at
   once, so the writer's pace is not measured), from its commit until the last one reaches
   the receiver; events/s, and the ratio to the baseline.
3. Delay: ``--rate`` events a second for ``--seconds``, each in its own transaction; the
   delay of an event is its arrival at the receiver minus its commit (``on_commit`` in this
   process); p50/p99 per replica count.

Every run checks that each delivery arrived once: it prints lost and doubled ones (a
delivery is doubled only if a notifier sent it twice; the receiver answers 200 at once).
``--profile FILE``: a ``py-spy record`` (raw collapsed stacks, idle threads too) of the
first notifier over the first throughput run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._infra import (
    Processes,
    Profile,
    drop_database,
    median,
    percentile,
    role_env,
    scratch_database_url,
    setup_django,
    wait_until,
)


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: a dozen senders (3 notifiers x 4) connecting at once
    # overflow it, and a dropped SYN is retried after a second, which measured the kernel, not us.
    request_queue_size = 128
    daemon_threads = True


class Receiver:
    """A webhook receiver on a free port: verifies each signature, notes ids and arrival times."""

    def __init__(self, delay_s: float) -> None:
        self.key = b""  # the subscription's secret, set once it exists
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.arrivals: dict[str, float] = {}  # webhook-id -> first arrival (time.time())
        self.event_of: dict[str, str] = {}  # webhook-id -> event id in the body
        self.counts: Counter[str] = Counter()
        self.bad_signatures = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                arrived = time.time()
                receiver.note(self.headers, body, arrived)
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)  # a slower receiver, when asked (--receiver-ms)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def note(self, headers: Any, body: bytes, arrived: float) -> None:
        msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        signed = f"{msg_id}.{stamp}.".encode() + body
        expected = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        offered = [part.split(",", 1)[1] for part in headers.get("webhook-signature", "").split() if "," in part]
        with self.lock:
            self.counts[msg_id] += 1
            if not any(hmac.compare_digest(expected, sig) for sig in offered):
                self.bad_signatures += 1
            self.arrivals.setdefault(msg_id, arrived)
            self.event_of.setdefault(msg_id, json.loads(body).get("id", ""))

    def reset(self) -> None:
        with self.lock:
            self.arrivals.clear()
            self.event_of.clear()
            self.counts.clear()
            self.bad_signatures = 0

    def received(self) -> int:
        with self.lock:
            return len(self.arrivals)


def baseline(receiver: Receiver, secret: str, count: int) -> float:
    """Signed POSTs straight from here, 4 threads: events/s."""
    import httpx

    key = base64.b64decode(secret.removeprefix("whsec_"))
    per_thread = count // 4

    def post(n: int) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(per_thread):
                msg_id = f"msg_base{n}_{i}"
                body = json.dumps({"id": f"evt_base{n}_{i}", "type": "job.finished", "data": {}}).encode()
                stamp = str(int(time.time()))
                signature = base64.b64encode(
                    hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
                ).decode()
                headers = {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": f"v1,{signature}"}
                client.post(receiver.url, content=body, headers=headers).raise_for_status()

    receiver.reset()
    started = time.perf_counter()
    threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return per_thread * 4 / (time.perf_counter() - started)


def emit_some(first: int, count: int, tag: str, committed: dict[str, float]) -> None:
    """``count`` job.finished events in one transaction; notes their commit time by event id."""
    from django.db import transaction

    from aegis_site.core import clock
    from notify import outbox

    with transaction.atomic():
        ids = []
        for n in range(first, first + count):
            payload = {"job": {"id": n, "kind": "bench", "state": "succeeded", "outcome": "succeeded"}}
            event = outbox.emit("job.finished", f"bench:{tag}:{n}", payload, clock.now(), job_id=n, job_kind="bench")
            if event is not None:
                ids.append(event.id)
        transaction.on_commit(lambda: committed.update(dict.fromkeys(ids, time.time())))


def check(receiver: Receiver, expected: int) -> dict[str, int]:
    with receiver.lock:
        doubled = sum(1 for count in receiver.counts.values() if count > 1)
        return {
            "lost": expected - len(receiver.arrivals),
            "doubled": doubled,
            "bad_signatures": receiver.bad_signatures,
        }


def cpu_seconds(pid: int) -> float:
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:  # a backend that ended (the pool closed it): its time is lost
        return 0.0
    return float(times.user + times.system)


def backends() -> list[int]:
    """The PostgreSQL backends of the scratch database (the notifiers' pooled connections, this process's)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        return [int(row[0]) for row in cursor.fetchall()]


def cpu_now(pids: dict[str, int], pg: list[int]) -> dict[str, float]:
    return {name: cpu_seconds(pid) for name, pid in pids.items()} | {"postgres": sum(map(cpu_seconds, pg))}


def throughput(
    receiver: Receiver, events: int, tag: str, timeout_s: float, pids: dict[str, int] | None = None
) -> dict[str, Any]:
    """``events`` written in one transaction (a backlog the notifiers see at once): events/s from its commit.

    With ``pids``: the CPU (% of one core) of those processes and of the database's backends
    from the commit until the last delivery arrived.
    """
    receiver.reset()
    committed: dict[str, float] = {}
    pg = backends()
    started = time.perf_counter()
    emit_some(0, events, tag, committed)
    written = time.perf_counter() - started
    before, drain_started = cpu_now(pids or {}, pg), time.perf_counter()
    wait_until(lambda: receiver.received() >= events, timeout_s, f"{events} deliveries at the receiver", 0.01)
    drain = time.perf_counter() - drain_started
    cpu = {name: (used - before[name]) / drain * 100 for name, used in cpu_now(pids or {}, pg).items()}
    time.sleep(1.0)  # a doubled delivery would arrive late: give it the chance to be counted
    with receiver.lock:
        elapsed = max(receiver.arrivals.values()) - min(committed.values())
    return {"events_per_s": events / elapsed, "write_s": written, "cpu": cpu} | check(receiver, events)


def delay(receiver: Receiver, rate: float, seconds: float, tag: str, timeout_s: float) -> dict[str, float]:
    receiver.reset()
    committed: dict[str, float] = {}
    total = int(rate * seconds)
    started = time.perf_counter()
    for n in range(total):
        time.sleep(max(0.0, started + n / rate - time.perf_counter()))
        emit_some(n, 1, tag, committed)
    wait_until(lambda: receiver.received() >= total, timeout_s, f"{total} deliveries at the receiver", 0.05)
    time.sleep(1.0)
    with receiver.lock:
        delays = [
            arrived - committed[receiver.event_of[msg_id]]
            for msg_id, arrived in receiver.arrivals.items()
            if receiver.event_of.get(msg_id) in committed
        ]
    return {"p50": percentile(delays, 50), "p99": percentile(delays, 99), "max": max(delays)} | check(receiver, total)


def run(args: argparse.Namespace) -> dict[str, Any]:
    procs = Processes()
    database_url = scratch_database_url("bench_notify")
    failed = True
    results: dict[str, Any] = {"replicas": {}}
    try:
        setup_django(database_url)
        from aegis_site.core import clock
        from notify.models import Subscription

        receiver = Receiver(args.receiver_ms / 1000)
        subscription = Subscription.objects.create(
            name="bench", url=receiver.url, events=["job.finished"], created_at=clock.now(), updated_at=clock.now()
        )
        receiver.key = base64.b64decode(subscription.secret.removeprefix("whsec_"))
        results["baseline"] = median([baseline(receiver, subscription.secret, args.events) for _ in range(2)])
        print(f"baseline: {results['baseline']:,.0f} signed POSTs/s straight to the receiver", flush=True)
        timeout_s = 120 + args.events / 10
        for count in args.replicas:
            env = role_env(database_url, 1883, f"bench-notify-{count}", NOTIFY_ALLOW_PRIVATE_ADDRESSES="true")
            notifiers = [procs.django_command(f"notifier{n}", ["run_notifier"], env) for n in range(count)]
            throughput(receiver, min(50, args.events), f"warm{count}", timeout_s)  # warm-up: also waits for startup
            profile = None
            if args.profile and count == args.replicas[0]:
                profile = Profile(procs, notifiers[0].pid, args.profile)
            pids = {f"notifier{n}": process.pid for n, process in enumerate(notifiers)} | {"bench": os.getpid()}
            run_ = throughput(receiver, args.events, f"tp{count}", timeout_s, pids)
            if profile is not None:
                profile.stop()
            late = delay(receiver, args.rate, args.seconds, f"dl{count}", timeout_s)
            procs.check_alive()
            for process in notifiers:
                procs.stop(process)
            results["replicas"][count] = {"throughput": run_, "delay": late}
            print(
                f"  {count} notifier(s): {run_['events_per_s']:,.0f} events/s "
                f"({run_['events_per_s'] / results['baseline']:.2f} of baseline; written in {run_['write_s']:.1f} s; "
                f"lost {run_['lost']}, "
                f"doubled {run_['doubled']}, bad signatures {run_['bad_signatures']}); at {args.rate:g}/s: delay p50 "
                f"{late['p50'] * 1000:.0f} ms, p99 {late['p99'] * 1000:.0f} ms, max {late['max'] * 1000:.0f} ms "
                f"(lost {late['lost']}, doubled {late['doubled']}); CPU % of a core while draining: "
                + ", ".join(f"{name} {percent:.0f}" for name, percent in run_["cpu"].items()),
                flush=True,
            )
        failed = False
        return results
    finally:
        procs.stop_all(failed)
        from django.db import connections

        connections.close_all()
        drop_database(database_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", default="1,2,3", help="notifier replica counts to run, comma-separated")
    parser.add_argument("--events", type=int, default=2000, help="events written at once in the throughput run")
    parser.add_argument("--rate", type=float, default=20.0, help="events a second in the delay run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the delay run")
    parser.add_argument("--receiver-ms", type=float, default=0.0, help="how long the receiver takes per request")
    parser.add_argument("--profile", help="write a py-spy profile of the first notifier's throughput run here")
    parser.add_argument("--quick", action="store_true", help="400 events, 5 s delay runs")
    args = parser.parse_args()
    args.replicas = [int(part) for part in str(args.replicas).split(",") if part]
    if args.quick:
        args.events, args.seconds = 400, 5.0
    r = run(args)
    print()
    print(f"{'replicas':>8} {'events/s':>10} {'/ baseline':>11} {'p50 ms':>8} {'p99 ms':>8} {'lost':>5} {'doubled':>8}")
    for count, row in r["replicas"].items():
        tp, late = row["throughput"], row["delay"]
        print(
            f"{count:>8} {tp['events_per_s']:>10,.0f} {tp['events_per_s'] / r['baseline']:>11.2f} "
            f"{late['p50'] * 1000:>8.0f} {late['p99'] * 1000:>8.0f} {tp['lost'] + late['lost']:>5} "
            f"{tp['doubled'] + late['doubled']:>8}"
        )
    print(f"baseline (signed POSTs straight to the receiver, 4 threads): {r['baseline']:,.0f}/s")


if __name__ == "__main__":
    main()
