"""users/middleware.py of the seed: every authenticated request refreshes `last_seen`.

DRF authenticates the bearer token inside the view and sets the user on the underlying Django
request too, so after the view has run `request.user` is the token's user: no second token
check or user read here, only the update.
"""
from django.utils import timezone

from .models import User


class UpdateLastSeenMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            # "Only updates necessary fields".
            User.objects.filter(pk=user.pk).update(last_seen=timezone.now())
        return response
