"""Which admin URLs ``bench/admin_scale.py`` times, found from ``admin.site`` so that new pages are covered.

For every registered model: the changelist, the changelist with one value of each list filter,
a search for a value that exists, page 50 when there is one, a change page (one per task
state for models with a ``state`` field) and every extra URL the ModelAdmin or the site adds
(reconciliation, job creation...). Changelists also get a "stock" twin: the same ModelAdmin
with Django's ``Paginator`` and ``show_full_result_count = True``, registered on a second
``AdminSite`` under ``/stock-admin/``, which is the baseline of the capped pages.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.contrib import admin
from django.core.exceptions import FieldError
from django.core.paginator import Paginator
from django.db import models
from django.test import Client
from django.urls import URLPattern, clear_url_caches, path, reverse

TYPED_SAMPLES = {"capability": "gpu", "label": "role=web"}  # typed filters that are not a plain field lookup
STANDARD_VIEWS = {"changelist", "add", "history", "delete", "change", "autocomplete"}
STOCK_PREFIX = "/stock-admin/"


@dataclass(frozen=True)
class Page:
    label: str
    url: str
    stock_url: str | None = None  # the same changelist on the stock site


def install_stock_site() -> None:
    """Register a stock twin of every ModelAdmin and serve it next to the project's URLs."""
    from django.conf import settings

    stock = admin.AdminSite(name="stock")
    for model, model_admin in admin.site._registry.items():
        twin = type(
            f"Stock{type(model_admin).__name__}",
            (type(model_admin),),
            {"paginator": Paginator, "show_full_result_count": True},
        )
        stock.register(model, twin)
    project = __import__(settings.ROOT_URLCONF, fromlist=["urlpatterns"])
    module = types.ModuleType("bench_admin_urls")
    module.urlpatterns = [path(STOCK_PREFIX.strip("/") + "/", stock.urls), *project.urlpatterns]
    for name in ("handler404", "handler500"):
        if hasattr(project, name):
            setattr(module, name, getattr(project, name))
    sys.modules[module.__name__] = module
    settings.ROOT_URLCONF = module.__name__
    clear_url_caches()


def discover(client: Client) -> list[Page]:
    pages = [Page("dashboard (admin index)", reverse("admin:index"))]
    pages += _site_extras()
    registry = sorted(admin.site._registry.items(), key=lambda item: item[0]._meta.label)
    for model, model_admin in registry:
        pages += _model_pages(client, model, model_admin)
    return pages


def _changelist(label: str, url: str) -> Page:
    return Page(label, url, url.replace("/admin/", STOCK_PREFIX, 1))


def _model_pages(client: Client, model: type[models.Model], model_admin: admin.ModelAdmin) -> list[Page]:
    opts = model._meta
    name = f"{opts.app_label}.{opts.model_name}"
    base = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
    pages = [_changelist(f"{name} list", base)]
    response = client.get(base, secure=True)
    cl = getattr(response, "context_data", {}).get("cl") if response.status_code == 200 else None
    if cl is not None:
        pages += [_changelist(f"{name} filter {label}", url) for label, url in filter_urls(cl, base, per_filter=1)]
        if cl.paginator.num_pages >= 50:
            pages.append(_changelist(f"{name} page 50", f"{base}?p=50"))
    term = _search_term(model, model_admin)
    if term:
        pages.append(_changelist(f"{name} search {term!r}", f"{base}?q={term}"))
    for label, pk in _sample_objects(model, model_admin):
        url = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[pk])
        pages.append(Page(f"{name} change {label}", url))
    pages += _model_extras(model, model_admin)
    return pages


def filter_urls(cl: Any, base: str, per_filter: int) -> list[tuple[str, str]]:
    """(label, URL) for up to ``per_filter`` values of each list filter of a changelist.

    Link filters give their own query strings; a typed filter (``aegis_site.core.adminkit.InputFilter`` and the
    like: a choice with a ``parameter_name``, no link) gets a value that exists in the table.
    """
    urls = []
    for spec in cl.filter_specs:
        title = getattr(spec, "title", "filter")
        choices = [c for c in spec.choices(cl) if not c.get("selected")]
        for choice in choices[:per_filter]:
            if "query_string" in choice:
                urls.append((f"{title}={choice.get('display', '')}", base + choice["query_string"]))
            elif "parameter_name" in choice:
                value = typed_value(cl.model, spec, choice["parameter_name"])
                if value is not None:
                    urls.append((f"{title}={value}", f"{base}?{urlencode({choice['parameter_name']: value})}"))
    return urls


def typed_value(model: type[models.Model], spec: Any, parameter: str) -> str | None:
    """A value for a typed filter: one the filter's lookup (or the parameter as a field) has, else a known sample."""
    field = getattr(spec, "lookup", "") or parameter
    try:
        return _existing_value(model, field)
    except FieldError:
        return TYPED_SAMPLES.get(parameter)


def _existing_value(model: type[models.Model], field: str) -> str | None:
    rows = model._default_manager.exclude(**{f"{field}__isnull": True}).order_by("-pk").values_list(field, flat=True)
    # Around the 1,000th newest row, skipping empty values (an event's agent id is empty before assignment).
    for value in [*rows[1000:1100], *rows[:100]]:
        if value not in (None, ""):
            return str(value)
    return None


def _search_term(model: type[models.Model], model_admin: admin.ModelAdmin) -> str | None:
    """A value of the first search field that some row has, so the search finds something."""
    fields = list(model_admin.search_fields or ())
    if not fields:
        return None
    return _existing_value(model, fields[0].lstrip("=^@"))


def _sample_objects(model: type[models.Model], model_admin: admin.ModelAdmin) -> list[tuple[str, Any]]:
    """One object (the 100th newest), or for models with a ``state`` one per state."""
    manager = model._default_manager
    state = next((f for f in model._meta.fields if f.name == "state" and f.choices), None)
    if state is None:
        pk = manager.order_by("-pk").values_list("pk", flat=True)[100:101].first()
        pk = pk if pk is not None else manager.order_by("pk").values_list("pk", flat=True).first()
        return [("", pk)] if pk is not None else []
    samples = []
    for value, _display in state.choices or ():
        pk = manager.filter(state=value).order_by("-pk").values_list("pk", flat=True).first()
        if pk is not None:
            samples.append((f"({value})", pk))
    return samples


def _extra_patterns(patterns: list[Any], standard: set[str]) -> list[URLPattern]:
    return [p for p in patterns if isinstance(p, URLPattern) and p.name and p.name not in standard]


def _site_extras() -> list[Page]:
    """URLs the project adds to the admin site itself (no arguments), e.g. a fleet-wide view."""
    stock = {p.name for p in admin.AdminSite().get_urls() if isinstance(p, URLPattern) and p.name}
    pages = []
    for pattern in _extra_patterns(admin.site.get_urls(), stock):
        if not pattern.pattern.regex.groups:
            pages.append(Page(f"site {pattern.name}", reverse(f"admin:{pattern.name}")))
    return pages


def _model_extras(model: type[models.Model], model_admin: admin.ModelAdmin) -> list[Page]:
    """The add page when it exists, and the ModelAdmin's own views (with an object's pk when they take one)."""
    opts = model._meta
    prefix = f"{opts.app_label}_{opts.model_name}_"
    standard = {prefix + view for view in STANDARD_VIEWS}
    pages = []
    if model_admin.has_add_permission(_superuser_request()):
        pages.append(Page(f"{opts.label_lower} add", reverse(f"admin:{prefix}add")))
    pk = model._default_manager.order_by("-pk").values_list("pk", flat=True).first()
    for pattern in _extra_patterns(model_admin.get_urls(), standard):
        groups = pattern.pattern.regex.groups
        if groups == 0:
            pages.append(Page(f"{opts.label_lower} {pattern.name}", reverse(f"admin:{pattern.name}")))
        elif groups == 1 and pk is not None:
            pages.append(Page(f"{opts.label_lower} {pattern.name}", reverse(f"admin:{pattern.name}", args=[pk])))
    return pages


def _superuser_request() -> Any:
    from django.contrib.auth import get_user_model
    from django.test import RequestFactory

    request = RequestFactory().get("/admin/")
    request.user = get_user_model()._default_manager.get(username="bench")
    return request
