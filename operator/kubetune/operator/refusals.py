"""Why the Job controller cannot create the trainer pods: its `FailedCreate` Events.

A Job whose pods the API server refuses has no pod to observe: the Job controller retries
the create with a backoff and says why only in Events on the Job (reason FailedCreate,
message "Error creating: <the API server's error>"). A full ResourceQuota frees up when
other work ends, so that is a wait; anything else the API server forbids (admission: a
missing PriorityClass or ServiceAccount, PodSecurity, a webhook's denial) or finds invalid
stays refused however long one waits. Errors of neither kind (a webhook that cannot be
reached, a timeout) are transient: they are shown, and the Job controller retries them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

FAILED_CREATE = "FailedCreate"
SUCCESSFUL_CREATE = "SuccessfulCreate"
QUOTA = "exceeded quota"
# The API server's words for a refusal that waiting cannot change.
PERMANENT = ("is forbidden", "is invalid", "denied the request")
PREFIX = "Error creating: "
# Each try names a new generated pod: without the name the message stays the same.
POD_NAME = re.compile(r'pods? "[^"]*" ')

Kind = Literal["quota", "permanent", "transient"]


@dataclass(frozen=True)
class Refusal:
    """The newest reason the Job's pods could not be created."""

    kind: Kind
    message: str
    """The API server's message, as the Job controller relayed it."""
    since: datetime | None
    """When the Job controller first reported it."""


def _time(event: dict[str, Any], *keys: str) -> datetime | None:
    for key in keys:
        value = event.get(key)
        if key == "series":
            value = (value or {}).get("lastObservedTime")
        if value:
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return None


def _last(event: dict[str, Any]) -> datetime | None:
    return _time(event, "series", "lastTimestamp", "eventTime", "firstTimestamp")


def classify(message: str) -> Kind:
    """quota, permanent or transient, from the API server's error message."""
    if QUOTA in message:
        return "quota"
    if any(words in message for words in PERMANENT):
        return "permanent"
    return "transient"


def refusal(events: Iterable[dict[str, Any]]) -> Refusal | None:
    """The refusal the Job's newest create outcome reports, or None when its newest create
    succeeded (or none failed). `events` are the Events whose involvedObject is the Job."""
    creates = [
        e
        for e in events
        if e.get("reason") in (FAILED_CREATE, SUCCESSFUL_CREATE) and _last(e) is not None
    ]
    if not creates:
        return None
    # Newest last; on a tie (one-second timestamps) a failure wins: it is still unresolved.
    creates.sort(key=lambda e: (_last(e), e.get("reason") == FAILED_CREATE))
    newest = creates[-1]
    if newest.get("reason") != FAILED_CREATE:
        return None
    raw = str(newest.get("message") or "").removeprefix(PREFIX).strip()
    message = POD_NAME.sub("pods ", raw, count=1)
    first = min(
        (
            t
            for e in creates
            if e.get("reason") == FAILED_CREATE
            and (t := _time(e, "firstTimestamp", "eventTime")) is not None
        ),
        default=None,
    )
    return Refusal(classify(raw), message, first)
