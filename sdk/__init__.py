"""Plugboard SDK: asyncio-first Client and Plugin, with a synchronous SyncClient."""

from plugboard.protocol.errors import (
    CallFailed,
    Conflict,
    ConnectionFailed,
    InvalidRequest,
    InvalidValue,
    KeyRefused,
    NotAllowed,
    NotFound,
    PlugboardError,
    RemoteError,
    RequestTimeout,
)
from plugboard.protocol.values import Duration, Timestamp

from ._client import Client
from ._events import (
    Batch,
    BatchEvent,
    Change,
    Gap,
    Message,
    PropertyInfo,
    Reconnected,
    Removed,
    Synced,
)
from ._plugin import Plugin
from ._subscription import Listener, Subscription
from ._sync import SyncClient, SyncSubscription

__all__ = [
    "Batch",
    "BatchEvent",
    "CallFailed",
    "Change",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "KeyRefused",
    "Duration",
    "Gap",
    "InvalidRequest",
    "InvalidValue",
    "Listener",
    "Message",
    "NotAllowed",
    "NotFound",
    "PlugboardError",
    "Plugin",
    "PropertyInfo",
    "Reconnected",
    "RemoteError",
    "Removed",
    "RequestTimeout",
    "Subscription",
    "SyncClient",
    "SyncSubscription",
    "Synced",
    "Timestamp",
]
