"""Who may keep how many requests in flight at the judge: one service, many callers.

The service works on ``replicas x max_batch_size`` requests at once. Each
caller (a stage's client, an eval, a Ray Data judging task) asks for its share
when it starts and again every ``refresh_s``; callers share the capacity
evenly, the remainder going to the earliest, so that together they keep
exactly the capacity in flight and a request's deadline measures its own
batch, not the queue of other callers ahead of it. A caller that stops asking
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
    """The callers of one service, by arrival, with when each last asked."""

    expire_s: float
    """A caller silent this long has left."""
    seen: dict[str, float] = field(default_factory=dict)
    """caller id -> last ask (monotonic seconds); insertion order is arrival order."""

    def share(self, caller: str, capacity: int, now: float) -> tuple[int, int]:
        """(this caller's share of ``capacity``, callers sharing it), registering or refreshing ``caller``.

        >>> book = AdmissionBook(expire_s=30)
        >>> book.share("a", 8, now=0.0), book.share("b", 8, now=1.0), book.share("c", 8, now=2.0)
        ((8, 1), (4, 2), (2, 3))
        >>> book.share("a", 8, now=3.0)  # a asks again: it is the first of three
        (3, 3)
        >>> book.share("c", 8, now=40.0)  # a and b went silent 37 s ago: c is alone
        (8, 1)
        """
        self.expire(now)
        self.seen[caller] = now
        order = list(self.seen)
        return fair_shares(capacity, len(order))[order.index(caller)], len(order)

    def leave(self, caller: str) -> None:
        """``caller`` has no more requests (its share goes to the others at their next ask)."""
        self.seen.pop(caller, None)

    def expire(self, now: float) -> None:
        for caller in [c for c, t in self.seen.items() if now - t > self.expire_s]:
            del self.seen[caller]
