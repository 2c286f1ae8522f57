from django.contrib.auth.models import AbstractUser
from django.db import models


class User(AbstractUser):
    """The seed's user: Django's user with the two presence fields."""

    online_status = models.CharField(max_length=10, default="offline", db_index=True)
    last_seen = models.DateTimeField(null=True, blank=True)
