"""Label resolution: exact names win, spelling variants resolve, substrings never do."""
import pytest

from w2e.inputs.labels import UnknownLabelError, resolve_label

FASHION = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"]


@pytest.mark.parametrize("typed, expected", [("shirt", "shirt"), ("Shirt", "shirt"), ("t-shirt", "t-shirt"),
                                             ("T Shirt", "t-shirt"), ("ankle boot", "ankle-boot"),
                                             ("Ankle-Boot", "ankle-boot"), ("ankle_boot", "ankle-boot"), ("6", "shirt")])
def test_names_resolve_to_their_own_class(typed, expected):
    assert FASHION[resolve_label(typed, FASHION)] == expected


def test_a_part_of_a_name_is_not_that_name():
    with pytest.raises(UnknownLabelError, match="did you mean 'ankle-boot'"):
        resolve_label("boot", FASHION)


def test_exact_names_win_over_synonyms_of_earlier_classes():
    names = ["crane, derrick", "heron, crane", "crane"]
    assert resolve_label("crane", names) == 2
    assert resolve_label("derrick", names) == 0
    assert resolve_label("heron", names) == 1
    assert resolve_label("Crane", names) == 2  # case-insensitive whole name before any synonym


def test_a_huge_label_is_echoed_cut_short_and_quickly():
    import time

    started = time.monotonic()
    with pytest.raises(UnknownLabelError) as caught:
        resolve_label("x" * 1_000_000, FASHION)
    message = str(caught.value)
    assert len(message) < 100 and "(1,000,000 characters)" in message and time.monotonic() - started < 1
