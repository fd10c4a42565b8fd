"""Who may call what: agents reach only the agent endpoints; operators need staff and the model permission."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

_VERB_BY_METHOD = {
    "GET": "view",
    "HEAD": "view",
    "OPTIONS": "view",
    "POST": "add",
    "PUT": "change",
    "PATCH": "change",
    "DELETE": "delete",
}


class IsAgent(BasePermission):
    """The request carries an agent's credential (token or agent JWT)."""

    message = "This endpoint is for agents (Authorization: Bearer <agent token>)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return getattr(request.user, "is_agent", False) is True


class IsOperator(BasePermission):
    """An active staff user holding the permissions the view names for this action.

    A view lists them in ``required_permissions`` by action name (``{"cancel":
    ["tasks.change_task"]}``); without an entry the permission follows the HTTP
    method and the view's model (GET: view, POST: add, PATCH: change, DELETE: delete).
    """

    message = "You do not have permission to do this."

    def has_permission(self, request: Request, view: Any) -> bool:
        if (request.method or "GET").upper() not in view.allowed_methods:
            return True  # the view answers 405, which says more than a 403
        user = request.user
        if getattr(user, "is_agent", False) is True or not (user and user.is_authenticated):
            return False
        if not (user.is_active and user.is_staff):
            return False
        return bool(user.has_perms(self.required(request, view)))

    @staticmethod
    def required(request: Request, view: Any) -> list[str]:
        named: dict[str, list[str]] = getattr(view, "required_permissions", {})
        action = getattr(view, "action", None)
        if action in named:
            return named[action]
        queryset = getattr(view, "queryset", None)
        if queryset is None:
            return []
        meta = queryset.model._meta
        return [f"{meta.app_label}.{_VERB_BY_METHOD.get(request.method or 'GET', 'view')}_{meta.model_name}"]
