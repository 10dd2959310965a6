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
    assert book.share("b", 8, now=0) == (4, 2)
    book.leave("a")
    assert book.share("b", 8, now=1) == (8, 1)
    book.leave("nobody")  # leaving twice, or never having asked, is harmless
    assert book.share("a", 8, now=2) == (4, 2)  # back, now the second to arrive


def test_a_silent_caller_expires_and_a_regular_one_keeps_its_place():
    book = AdmissionBook(expire_s=10)
    book.share("a", 9, now=0)
    book.share("b", 9, now=0)
    book.share("c", 9, now=0)
    assert book.share("a", 9, now=9) == (3, 3)
    assert book.share("a", 9, now=15) == (9, 1)  # b and c silent for 15 s: gone
    assert list(book.seen) == ["a"]
