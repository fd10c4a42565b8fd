"""Cursor pagination everywhere: stable under inserts, no COUNT(*) over millions of tasks."""

from __future__ import annotations

from django.conf import settings
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request


class CursorPage(CursorPagination):
    ordering = "-id"
    page_size_query_param = "page_size"

    def __init__(self) -> None:
        self.page_size = int(settings.API_PAGE_SIZE)
        self.max_page_size = int(settings.API_MAX_PAGE_SIZE)

    def get_page_size(self, request: Request) -> int:
        """A ``page_size`` that is not a positive integer is an error (DRF would quietly use the default)."""
        raw = request.query_params.get(self.page_size_query_param)
        default, cap = int(settings.API_PAGE_SIZE), int(settings.API_MAX_PAGE_SIZE)
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) < 1:
            raise ValidationError({"page_size": ["A positive integer is required."]})
        return min(int(raw), cap)


class IdOrderedPage(CursorPage):
    """For objects with natural-key ids (agents): ascending id."""

    ordering = "id"
