"""Fair shares of the judge's capacity among its callers (pure arithmetic, worked by hand)."""

from rayalign.judge.admission import AdmissionBook, fair_shares


def test_shares_add_up_to_the_capacity_with_the_remainder_to_the_earliest():
    assert fair_shares(16, 3) == [6, 5, 5]  # 16 = 3 x 5 + 1
    assert fair_shares(8, 4) == [2, 2, 2, 2]
    assert sum(fair_shares(13, 5)) == 13
    assert fair_shares(8, 0) == []


def test_more_callers_than_capacity_get_one_each_rather_than_none():
    assert fair_shares(3, 5) == [1, 1, 1, 1, 1]


def test_a_caller_that_leaves_hands_its_share_to_the_next_ask():
    book = AdmissionBook(expire_s=10)
    assert book.share("a", 8, now=0) == (8, 1)
    assert book.share("b", 8, now=0) == (1, 2)  # a still holds 8 until it asks again
    assert book.share("a", 8, now=1) == (4, 2)
    assert book.share("b", 8, now=1) == (4, 2)
    book.leave("a")
    assert book.share("b", 8, now=2) == (8, 1)
    book.leave("nobody")  # leaving twice, or never having asked, is harmless
    assert book.share("a", 8, now=3) == (1, 2)  # back, now the second to arrive, and b holds 8
    assert book.share("b", 8, now=4) == (4, 2) and book.share("a", 8, now=4) == (4, 2)


def test_a_silent_caller_expires_and_a_regular_one_keeps_its_place():
    book = AdmissionBook(expire_s=10)
    book.share("a", 9, now=0)
    book.share("b", 9, now=0)
    book.share("c", 9, now=0)
    assert book.held == {"a": 9, "b": 1, "c": 1}  # the newcomers wait for a to shrink
    assert book.share("a", 9, now=9) == (3, 3)
    assert book.share("a", 9, now=15) == (9, 1)  # b and c silent for 15 s: gone
    assert list(book.seen) == ["a"] and book.held == {"a": 9}


def test_a_shrunk_caller_holds_what_it_still_has_in_flight():
    book = AdmissionBook(expire_s=100)
    book.share("a", 8, now=0)
    book.share("b", 8, now=0)
    assert book.share("a", 8, now=1, in_flight=8) == (4, 2) and book.held["a"] == 8  # shrunk, not drained
    assert book.share("b", 8, now=1) == (1, 2)  # so b cannot grow yet
    assert book.share("a", 8, now=2, in_flight=4) == (4, 2) and book.share("b", 8, now=2) == (4, 2)


def test_together_the_callers_overshoot_by_at_most_one_per_newcomer():
    book = AdmissionBook(expire_s=100)
    grants = {}
    for t, caller in enumerate("abcde"):
        grants[caller] = book.share(caller, 16, now=t)[0]
        assert sum(grants.values()) <= 16 + t  # each newcomer adds at most one
    for caller in "abcde":
        grants[caller] = book.share(caller, 16, now=10)[0]
    assert grants == dict(zip("abcde", [4, 3, 3, 3, 3])) and sum(grants.values()) == 16
