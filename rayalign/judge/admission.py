"""Who may keep how many requests in flight at the judge: one service, many callers.

The service works on ``replicas x max_batch_size`` requests at once. Each
caller (a stage's client, an eval, a Ray Data judging task) asks for its share
when it starts and again every ``refresh_s``; callers share the capacity
evenly, the remainder going to the earliest, so that together they keep
exactly the capacity in flight and a request's deadline measures its own
batch, not the queue of other callers ahead of it. A newcomer gets only what
the others hold (their shares, or what they still have in flight) leaves,
until they have shrunk. A caller that stops asking
(it finished without saying so, or died) drops out after ``expire_s``.

Pure logic: :class:`~rayalign.judge.service.JudgeAdmission` holds one book for
the whole service.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def fair_shares(capacity: int, callers: int) -> list[int]:
    """Requests in flight per caller, in order of arrival: ``capacity`` split evenly, the remainder to the
    first; never below one (more callers than capacity oversubscribe by one request each rather than starve).

    >>> fair_shares(8, 3)
    [3, 3, 2]
    >>> fair_shares(4, 1)
    [4]
    >>> fair_shares(2, 3)
    [1, 1, 1]
    """
    if callers <= 0:
        return []
    base, extra = divmod(capacity, callers)
    return [max(1, base + (rank < extra)) for rank in range(callers)]


@dataclass
class AdmissionBook:
    """The callers of one service, by arrival, with when each last asked and what it may have in flight."""

    expire_s: float
    """A caller silent this long has left."""
    seen: dict[str, float] = field(default_factory=dict)
    """caller id -> last ask (monotonic seconds); insertion order is arrival order."""
    held: dict[str, int] = field(default_factory=dict)
    """caller id -> what it may have in flight: its last share, or more while an earlier, larger share drains."""

    def share(self, caller: str, capacity: int, now: float, in_flight: int = 0) -> tuple[int, int]:
        """(this caller's share of ``capacity``, callers sharing it), registering or refreshing ``caller``;
        ``in_flight``: what the caller has in flight as it asks.

        The share is the caller's fair share, but never more than what the others hold leaves (at least
        one): a newcomer starts small and grows at a later ask, once the others have shrunk and their
        requests in flight have drained, so the callers together overshoot the capacity by at most one
        request per newcomer.

        >>> book = AdmissionBook(expire_s=30)
        >>> book.share("a", 8, now=0.0), book.share("b", 8, now=1.0), book.share("c", 8, now=2.0)
        ((8, 1), (1, 2), (1, 3))
        >>> book.share("a", 8, now=3.0, in_flight=8), book.share("b", 8, now=3.0, in_flight=1)
        ((3, 3), (1, 3))
        >>> book.share("a", 8, now=4.0, in_flight=3), book.share("b", 8, now=4.0), book.share("c", 8, now=4.0)
        ((3, 3), (3, 3), (2, 3))
        >>> book.share("c", 8, now=40.0)  # a and b went silent 37 s ago: c is alone
        (8, 1)
        """
        self.expire(now)
        self.seen[caller] = now
        order = list(self.seen)
        fair = fair_shares(capacity, len(order))[order.index(caller)]
        left = capacity - sum(n for c, n in self.held.items() if c != caller)
        share = max(1, min(fair, left))
        self.held[caller] = max(share, in_flight)
        return share, len(order)

    def leave(self, caller: str) -> None:
        """``caller`` has no more requests (its share goes to the others at their next ask)."""
        self.seen.pop(caller, None)
        self.held.pop(caller, None)

    def expire(self, now: float) -> None:
        for caller in [c for c, t in self.seen.items() if now - t > self.expire_s]:
            self.leave(caller)
