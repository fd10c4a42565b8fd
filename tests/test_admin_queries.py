"""Admin pages cost the same number of queries with 3 rows or 30, and lists never count a big table.

The pages come from ``admin.site._registry`` (and the site's own extra views), so a page added
later is covered without touching this file. Each page is rendered once to warm caches, then its
queries are captured; the world then grows tenfold (more agents, tasks, events, credentials of
the sampled agent, events of the sampled task...) and the same URL must cost exactly as many
queries. A difference is an N+1: a query per row, per event, per credential.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.contrib.auth.models import Group
from django.core.cache import cache
from django.db import connection
from django.db.models import Model
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, reverse

from aegis_site.core.audit import Actor
from bench._admin_pages import filter_urls
from ops import actions as ops_actions
from registry import actions as registry_actions
from tasks import actions as task_actions
from tasks.engine.reports import Report

pytestmark = pytest.mark.django_db

REGISTRY = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)
MODELS = [model for model, _ in REGISTRY]
BIG_TABLES = ("tasks", "agents", "task_events", "audit_events")
SMALL, BIG = 3, 30


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    """Creating the test users must not spend most of the run stretching passwords."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@dataclass
class World:
    """A fleet grown through the actions: each ``grow(n)`` adds n of everything, and the newest
    agent, task and job get n related rows (credentials, events, tasks), so per-row queries show.
    Every state shows up: finished, failed, running, queued (a job needing a capability nobody has),
    and one agent goes offline."""

    spec: Any
    operator: Actor = field(default_factory=lambda: Actor("operator"))
    size: int = 0

    def grow(self, n: int) -> None:
        self._subscribe()
        ids = [f"node-{self.size + i:03d}" for i in range(n)]
        for number, agent_id in enumerate(ids):
            registry_actions.register_agent(
                agent_id,
                self.operator,
                labels={"role": "web", "rack": f"r{number % 3}"},
                capabilities=["shell"],
                max_concurrency=n + 2,
                version=f"1.{number % 3}",
            )
            registry_actions.mark_online(agent_id)
            registry_actions.issue_token(agent_id, self.operator)
        newest = ids[-1]
        for _ in range(n - 1):
            registry_actions.issue_token(newest, self.operator)
        task_actions.submit_job(self.spec(target_agent_ids=ids), self.operator)
        task_actions.submit_job(self.spec(mode="any", task_count=n), self.operator)
        task_actions.submit_job(self.spec(mode="any", task_count=n, target_capabilities=["gpu"]), self.operator)
        for number, agent_id in enumerate(ids[:-1]):
            (assignment,) = task_actions.claim_tasks(agent_id, 1, push=True)
            self._finish(agent_id, assignment.task_id, assignment.attempt, ok=number % 2 == 0)
        *done, running = task_actions.claim_tasks(newest, n + 1, push=True)
        for assignment in done:
            self._finish(newest, assignment.task_id, assignment.attempt, ok=True)
        self._progress(newest, running.task_id, running.attempt, n)
        registry_actions.mark_offline(ids[0], "keepalive timeout")
        self._people(n)
        self._delivery_log(n)
        self.size += n

    def _subscribe(self) -> None:
        """One more subscription to every event: the actions above write events and deliveries for each."""
        from notify import actions as notify_actions
        from notify.models import EventType

        notify_actions.create_subscription(
            self.operator,
            name=f"hook {self.size}",
            url="https://hooks.example.org/aegis",
            events=list(EventType.values),
        )

    def _delivery_log(self, n: int) -> None:
        """The newest delivery (by id) gets n attempts: only a notifier writes them, so they are rows here."""
        from aegis_site.core import clock
        from notify.models import Delivery, DeliveryAttempt

        newest = Delivery.objects.order_by("-pk").first()
        if newest is not None:
            DeliveryAttempt.objects.bulk_create(
                DeliveryAttempt(delivery=newest, at=clock.now(), status=502, error="bad gateway") for _ in range(n)
            )

    def _finish(self, agent_id: str, task_id: int, attempt: int, ok: bool) -> None:
        key = f"{task_id}-{attempt}"
        end = (
            Report("succeeded", task_id, attempt, message_id=f"{key}-done", result={"exit_code": 0})
            if ok
            else Report("failed", task_id, attempt, message_id=f"{key}-done", error={"code": "E_EXIT"}, retryable=False)
        )
        task_actions.apply_reports(agent_id, [Report("accepted", task_id, attempt, message_id=f"{key}-ok"), end])

    def _progress(self, agent_id: str, task_id: int, attempt: int, n: int) -> None:
        """The newest task keeps running, with n progress events."""
        reports = [Report("accepted", task_id, attempt, message_id=f"{task_id}-{attempt}-ok")]
        reports += [
            Report("progress", task_id, attempt, message_id=f"{task_id}-{attempt}-p{k}", progress={"percent": k})
            for k in range(n)
        ]
        task_actions.apply_reports(agent_id, reports)

    def _people(self, n: int) -> None:
        from django.contrib.auth import get_user_model

        users = get_user_model()._default_manager
        for number in range(self.size, self.size + n):
            user = users.create_user(f"op-{number:03d}", is_staff=True)
            ops_actions.issue_api_token(user, "script", self.operator)
            Group.objects.create(name=f"team-{number:03d}")
            registry_actions.create_enrolment_token(self.operator, name=f"batch {number}")


@pytest.fixture
def world(spec: Any, frozen_clock: Any) -> World:
    return World(spec)


def query_count(client: Client, url: str) -> tuple[int, list[str]]:
    """Queries of the second GET (the first fills caches), cache emptied before."""
    cache.clear()
    first = client.get(url)
    assert first.status_code == 200, f"{url} answered {first.status_code}"
    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    return len(captured.captured_queries), [q["sql"] for q in captured.captured_queries]


def changelist_url(model: type[Model]) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")


def list_variants(client: Client, model: type[Model]) -> list[str]:
    """The list, the list with each filter's values (up to 8 a filter; typed filters get a value
    the table has), and a search."""
    base = changelist_url(model)
    urls = [base]
    response = client.get(base)
    cl = response.context_data["cl"]
    urls += [url for _label, url in filter_urls(cl, base, per_filter=8)]
    if admin.site._registry[model].search_fields:
        urls.append(f"{base}?q=node")
    return urls


def extra_urls(client: Client, model: type[Model]) -> list[str]:
    """The add page and the ModelAdmin's own views that take no argument (job creation, reconciliation...);
    views that only take a POST (a 405 to a GET) render nothing to count."""
    model_admin = admin.site._registry[model]
    opts = model._meta
    prefix = f"{opts.app_label}_{opts.model_name}_"
    standard = {prefix + view for view in ("changelist", "add", "history", "delete", "change", "autocomplete")}
    urls = [reverse(f"admin:{prefix}add")] if _can_add(model_admin) else []
    for pattern in model_admin.get_urls():
        if isinstance(pattern, URLPattern) and pattern.name not in standard and not pattern.pattern.regex.groups:
            urls.append(reverse(f"admin:{pattern.name}"))
    return [url for url in urls if client.get(url).status_code != 405]


def _can_add(model_admin: admin.ModelAdmin) -> bool:
    from django.contrib.auth import get_user_model
    from django.test import RequestFactory

    request = RequestFactory().get("/")
    request.user = get_user_model()._default_manager.get(username="admin")  # pytest-django's admin_user
    return bool(model_admin.has_add_permission(request))


def newest_change_url(model: type[Model]) -> str:
    pk = model._default_manager.order_by("-pk").values_list("pk", flat=True).first()
    if pk is None:
        pytest.fail(f"World.grow makes no {model._meta.label} rows: teach it to, so its change page is checked")
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[quote(pk)])


def compare(client: Client, world: World, urls_of: Any) -> Iterator[tuple[str, int, int]]:
    """For each URL of the small world: its query count there and after growing tenfold."""
    world.grow(SMALL)
    small = {url: query_count(client, url)[0] for url in urls_of()}
    world.grow(BIG - SMALL)
    for url, count in small.items():
        yield url, count, query_count(client, url)[0]


def assert_constant(results: Iterator[tuple[str, int, int]]) -> None:
    grown = [
        f"{url}: {small} queries with {SMALL} rows, {big} with {BIG}" for url, small, big in results if small != big
    ]
    assert not grown, "queries grow with the rows (N+1):\n" + "\n".join(grown)


def test_dashboard_queries_do_not_grow_with_the_fleet(admin_client: Client, world: World) -> None:
    assert_constant(compare(admin_client, world, lambda: [reverse("admin:index")]))


@pytest.mark.parametrize("model", MODELS, ids=[m._meta.label_lower for m in MODELS])
def test_changelist_queries_do_not_grow_with_rows(admin_client: Client, world: World, model: type[Model]) -> None:
    assert_constant(
        compare(admin_client, world, lambda: list_variants(admin_client, model) + extra_urls(admin_client, model))
    )


@pytest.mark.parametrize("model", MODELS, ids=[m._meta.label_lower for m in MODELS])
def test_change_page_queries_do_not_grow_with_related_rows(
    admin_client: Client, world: World, model: type[Model]
) -> None:
    """The newest object of each model has more related rows in the bigger world (events, credentials, tasks)."""
    world.grow(SMALL)
    small = query_count(admin_client, newest_change_url(model))[0]
    world.grow(BIG - SMALL)
    big = query_count(admin_client, newest_change_url(model))[0]
    assert small == big, f"{model._meta.label} change page: {small} queries with {SMALL} related rows, {big} with {BIG}"


COUNT = re.compile(r"\bCOUNT\(", re.IGNORECASE)


def unbounded_counts(sqls: list[str]) -> list[str]:
    """COUNTs that read one of the big tables without a LIMIT bounding what they count."""
    return [
        sql
        for sql in sqls
        if COUNT.search(sql) and any(f'"{table}"' in sql for table in BIG_TABLES) and " LIMIT " not in sql.upper()
    ]


def test_unbounded_count_detection_tells_capped_from_full_counts() -> None:
    capped = 'SELECT COUNT(*) FROM (SELECT 1 AS "a" FROM "tasks" ORDER BY "tasks"."id" DESC LIMIT 10001) subquery'
    full = 'SELECT COUNT(*) AS "__count" FROM "tasks"'
    assert unbounded_counts([capped, full, 'SELECT "agents"."id" FROM "agents" LIMIT 100']) == [full]


@pytest.mark.parametrize("model", MODELS, ids=[m._meta.label_lower for m in MODELS])
def test_changelists_never_count_a_big_table_without_a_limit(
    admin_client: Client, world: World, model: type[Model]
) -> None:
    world.grow(SMALL)
    offenders = {url: unbounded_counts(query_count(admin_client, url)[1]) for url in list_variants(admin_client, model)}
    offenders = {url: sqls for url, sqls in offenders.items() if sqls}
    assert not offenders, "unbounded COUNT on a big table:\n" + "\n".join(
        f"{url}: {sql}" for url, sqls in offenders.items() for sql in sqls
    )


def test_capped_list_says_cap_plus_and_its_page_links_work(
    admin_client: Client, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """templates/admin/pagination.html: past the cap the total reads "5+", and the links up to it still open."""
    from aegis_site.core.adminkit import CappedPaginator
    from tasks.models import Task

    world.grow(SMALL)
    assert Task.objects.count() > 6
    monkeypatch.setattr(CappedPaginator, "cap", 5)
    monkeypatch.setattr(admin.site._registry[Task], "list_per_page", 2)
    page = admin_client.get(changelist_url(Task)).content.decode()
    assert ">5+</span> tasks" in page
    assert 'href="?p=3"' in page  # 6 counted rows, 2 a page
    assert 'href="?p=4"' not in page
    assert admin_client.get(changelist_url(Task) + "?p=3").status_code == 200


def test_uncapped_list_gives_the_exact_total(admin_client: Client, world: World) -> None:
    from tasks.models import Task

    world.grow(SMALL)
    page = admin_client.get(changelist_url(Task)).content.decode()
    assert "capped-count" not in page
    assert f"{Task.objects.count()} tasks" in page
