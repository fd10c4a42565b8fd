"""Cursor pagination everywhere: stable under inserts, no COUNT(*) over millions of tasks."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from django.db.models import QuerySet
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.views import APIView

MAX_BIGINT = 2**63 - 1
_INTEGER = re.compile(r"\A[0-9]{1,19}\Z")  # ids are positive: this server never makes another cursor


class CursorPage(CursorPagination):
    ordering = "-id"
    page_size_query_param = "page_size"

    def __init__(self) -> None:
        self.page_size = int(settings.API_PAGE_SIZE)
        self.max_page_size = int(settings.API_MAX_PAGE_SIZE)
        self.model: type[models.Model] | None = None

    def paginate_queryset(
        self, queryset: QuerySet[Any], request: Request, view: APIView | None = None
    ) -> list[Any] | None:
        self.model = queryset.model  # decode_cursor checks the position against the ordering column's type
        return super().paginate_queryset(queryset, request, view)

    def get_page_size(self, request: Request) -> int:
        """A ``page_size`` that is not a positive integer is an error (DRF would quietly use the default)."""
        raw = request.query_params.get(self.page_size_query_param)
        default, cap = int(settings.API_PAGE_SIZE), int(settings.API_MAX_PAGE_SIZE)
        if raw is None:
            return default
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:  # "²" is a digit to isdigit(), not to int()
            raise ValidationError({"page_size": ["A positive integer is required."]})
        return min(int(raw), cap)

    def decode_cursor(self, request: Request) -> Cursor | None:
        """A cursor this server did not make is a 400, never a query the database refuses.

        DRF decodes the cursor's base64 but passes its position to the filter as it is: ``abc``
        against an integer id, NUL, or a number past bigint ended in a 500.
        """
        try:
            cursor = super().decode_cursor(request)
        except NotFound:
            raise _invalid() from None
        if cursor is None or cursor.position is None:
            return cursor
        self._check_position(str(cursor.position))
        return cursor

    def _check_position(self, position: str) -> None:
        if "\x00" in position:
            raise _invalid()
        if self.model is None:
            return
        name = self.ordering[0].lstrip("-") if isinstance(self.ordering, list | tuple) else self.ordering.lstrip("-")
        try:
            field = self.model._meta.get_field(name)
        except FieldDoesNotExist:
            return
        if isinstance(field, models.IntegerField | models.AutoField):
            if not _INTEGER.match(position) or int(position) > MAX_BIGINT:
                raise _invalid()
            return
        if not isinstance(field, models.Field):
            return
        try:
            field.clean(position, None)
        except DjangoValidationError:
            raise _invalid() from None


def _invalid() -> ValidationError:
    return ValidationError({"cursor": ["Not a cursor of this list; follow the next or previous link."]})


class IdOrderedPage(CursorPage):
    """For objects with natural-key ids (agents): ascending id."""

    ordering = "id"
