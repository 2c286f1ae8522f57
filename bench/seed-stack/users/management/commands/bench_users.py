"""Creates N benchmark users and writes one access token each, `username token` per line."""
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand
from rest_framework_simplejwt.tokens import AccessToken

from users.models import User


class Command(BaseCommand):
    help = "Create N benchmark users and write their access tokens to FILE"

    def add_arguments(self, parser):
        parser.add_argument("count", type=int)
        parser.add_argument("file")
        parser.add_argument("--prefix", default="seed-u")

    def handle(self, *args, count, file, prefix, **options):
        password = make_password("bench-password-1")
        users = User.objects.bulk_create(
            User(username=f"{prefix}{i}", password=password) for i in range(count)
        )
        with open(file, "w", encoding="utf-8") as out:
            for user in users:
                out.write(f"{user.username} {AccessToken.for_user(user)}\n")
