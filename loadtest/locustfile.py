"""Locust scenarios for a BlueWren node; pick one by class name (see README.md).

    locust -f loadtest/locustfile.py --headless -H ws://127.0.0.1:8470/ \
        -u 10 -r 10 -t 30s --bluewren-data-dir DATA DirectChatUser
"""

from bluewren_load import thresholds as thresholds
from bluewren_load.users import (
    DirectChatUser,
    Group100User,
    Group1000User,
    PresenceChurnUser,
    ReconnectStormUser,
)

__all__ = [
    "DirectChatUser",
    "Group100User",
    "Group1000User",
    "PresenceChurnUser",
    "ReconnectStormUser",
    "thresholds",
]
