from django.utils import timezone
from rest_framework.response import Response
from rest_framework.views import APIView


class HeartbeatView(APIView):
    """POST /api/users/heartbeat/: the seed's heartbeat."""

    def post(self, request):
        user = request.user
        user.online_status = "online"
        user.last_seen = timezone.now()
        user.save(update_fields=["online_status", "last_seen"])
        return Response(
            {
                "message": "Heartbeat recorded",
                "online_status": user.online_status,
                "last_seen": user.last_seen,
            }
        )
