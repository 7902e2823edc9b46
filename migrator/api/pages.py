"""The API tokens page: each user creates, sees and revokes their own
tokens. A new token is shown once, on the page that created it."""

from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import messages
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from ..audit.requests import audit
from ..consumers import recheck_sockets
from ..roles import role_required
from .models import ApiToken

MAX_EXPIRY_DAYS = 3650


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=100,
        help_text="What the token is for, e.g. \u201cmaintenance window script\u201d.",
        error_messages={"required": "Name the token, so you know later what uses it."},
    )
    expires_in_days = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=MAX_EXPIRY_DAYS,
        label="Expires in (days)",
        help_text="Empty = never. It can be revoked here at any time.",
        error_messages={
            "min_value": "A token lasts at least 1 day; leave it empty for no expiry.",
            "max_value": f"A token lasts at most {MAX_EXPIRY_DAYS} days; leave it empty for no expiry.",
        },
    )

    def expires_at(self):
        days = self.cleaned_data.get("expires_in_days")
        return timezone.now() + timedelta(days=days) if days else None


@role_required()
def tokens(request):
    form = TokenForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        token, created = ApiToken.issue(request.user, form.cleaned_data["name"], form.expires_at())
        audit(request, "api_token.created", token, name=token.name, expires_at=token.expires_at)
        form = TokenForm()
    return render(
        request,
        "api/tokens.html",
        {"form": form, "created": created, "tokens": ApiToken.objects.filter(user=request.user)},
    )


@require_POST
@role_required()
def revoke(request, pk: int):
    token = get_object_or_404(ApiToken, pk=pk, user=request.user)
    if token.revoke():
        audit(request, "api_token.revoked", token, name=token.name)
        recheck_sockets(request.user.pk)  # a socket opened with it closes now
        messages.success(
            request, f"Token \u201c{token.name}\u201d is revoked: scripts using it are refused from now on."
        )
    else:
        messages.info(request, f"Token \u201c{token.name}\u201d was already revoked.")
    return redirect("api_tokens")
