"""Admin building blocks shared by the apps.

- ``ReadOnlyAdmin``: list and inspect; rows change only through an app's ``actions``.
- ``has_operate_permission``: who may run an operator action (the model's ``change`` permission),
  used as ``allowed_permissions=("operate",)`` on admin actions and checked by custom views.
- ``run_for_each``: call one action per selected object, report successes and refusals.
- ``CappedPaginator``: never counts a big table; counts at most ``cap + 1`` rows.
- ``InputFilter``: a list filter typed into a text box, for columns with too many values to list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import cached_property
from typing import Any

from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.core.exceptions import ObjectDoesNotExist
from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect

from aegis_site.core.audit import Actor
from aegis_site.core.errors import DomainError


def actor_of(request: HttpRequest) -> Actor:
    return Actor.of_user(request.user)


class CappedPaginator(Paginator):
    """A paginator whose count stops at ``cap + 1``: ``SELECT COUNT(*) FROM (... LIMIT cap+1)``.

    Changelists over millions of rows then cost one bounded query; the page links go as far as
    the cap and filters narrow the rest. ``capped`` tells the template to print "10,000+".
    """

    cap = 10_000

    @cached_property
    def count(self) -> int:
        return int(self.object_list[: self.cap + 1].count())  # type: ignore[attr-defined]

    @property
    def capped(self) -> bool:
        return self.count > self.cap


class ReadOnlyAdmin(admin.ModelAdmin):
    """List and inspect; every change goes through an app's ``actions``. No full-table COUNT on lists."""

    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # facet counts would COUNT the whole table once per filter choice
    paginator = CappedPaginator

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def response_action(self, request: HttpRequest, queryset: QuerySet[Any]) -> HttpResponse | None:
        """Refuse "select all N" across pages: on a capped list N is not known, and an action over
        millions of rows is not a click. Operators select the rows of a page or narrow with filters."""
        if request.POST.get("select_across") == "1":
            self.message_user(
                request,
                "Acting on every row of the list is not offered: select rows on the page, or narrow the list "
                "with filters first.",
                messages.WARNING,
            )
            return HttpResponseRedirect(request.get_full_path())
        return super().response_action(request, queryset)

    def has_operate_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        """Operator actions (drain, cancel, retry...) need the model's ``change`` permission."""
        codename = get_permission_codename("change", self.opts)
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")


MAX_ID = 2**63 - 1  # bigint: past it the driver overflows (SQLite) or the query fails (PostgreSQL)


def whole_number(text: str) -> int | None:
    """``text`` as an id or count a column can hold, else None: ASCII digits only ("²" passes ``isdigit``)."""
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_ID:
        return None
    return int(text)


class InputFilter(admin.SimpleListFilter):
    """A list filter whose value is typed, not picked: listing 100,000 agents or every kind would scan the table.

    Subclasses set ``title``, ``parameter_name`` and ``lookup`` (the queryset lookup the value
    goes to), and may override ``clean`` (raise ``ValueError`` for a value that can match nothing).
    """

    template = "admin/ops/input_filter.html"
    lookup = ""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return []

    def has_output(self) -> bool:
        return True

    def clean(self, value: str) -> object:
        return value

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = (self.value() or "").strip()
        if not value:
            return queryset
        try:
            return queryset.filter(**{self.lookup: self.clean(value)})
        except ValueError:
            return queryset.none()

    def choices(self, changelist: Any) -> Iterator[dict[str, Any]]:  # type: ignore[override]  # its own template
        """One entry for the template: the typed value, the other parameters to keep, the link that clears it."""
        yield {
            "value": self.value() or "",
            "parameter_name": self.parameter_name,
            "keep": [(name, value) for name, value in changelist.params.items() if name != self.parameter_name],
            "clear": changelist.get_query_string(remove=[self.parameter_name]),
        }


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


REFUSALS: tuple[type[Exception], ...] = (DomainError, ObjectDoesNotExist, ValueError)


def run_for_each(
    model_admin: admin.ModelAdmin,
    request: HttpRequest,
    ids: Iterable[Any],
    action: Callable[[Any], object],
    done: str,
) -> int:
    """Run ``action(id)`` for each id; one message for the successes (``done`` takes ``{count}``), one per refusal.

    Each call is its own transaction (the actions open theirs), so one refusal does not undo the others.
    """
    count = 0
    for object_id in ids:
        try:
            action(object_id)
        except REFUSALS as exc:
            model_admin.message_user(request, f"{object_id}: {exc}", messages.WARNING)
        else:
            count += 1
    if count:
        model_admin.message_user(request, done.format(count=count), messages.SUCCESS)
    return count
