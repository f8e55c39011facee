"""The image count a node reports after a commit, against the images staged for the task."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from clusterodm.tasks.nodeside import count_matches

FILES = [Path(n) for n in ("a.jpg", "b.JPG", "gcp_list.txt", "seed.zip", "align.laz")]


def test_count_of_every_file_or_of_the_images_only() -> None:
    assert count_matches({"imagesCount": 5}, FILES)  # right after the commit
    assert count_matches({"imagesCount": 2}, FILES)  # once GCP and archives moved out
    assert not count_matches({"imagesCount": 4}, FILES)
    assert not count_matches({"imagesCount": 10}, FILES)  # a copy of everything (a_.jpg)


def test_unusable_counts_do_not_match_and_a_missing_one_is_not_checked() -> None:
    for bad in ("5", 5.0, True, [5], -1):
        assert not count_matches({"imagesCount": bad}, FILES)
    assert count_matches({}, FILES)


@given(st.dictionaries(st.text(max_size=12), st.none() | st.integers() | st.text(), max_size=4))
def test_any_answer_is_judged_without_raising(info: dict[str, Any]) -> None:
    assert count_matches(info, FILES) in (True, False)
