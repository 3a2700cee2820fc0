"""Runtime.map_parts / part: each process's contiguous part of a list in whole chunks (issue 14).
One process here; tests/test_accelerate_runs.py runs the helper on two (score, judging, the
self-reward loop, the reward model's embedding cache)."""

from __future__ import annotations

import pytest

from rewardiff.errors import RewardiffError
from rewardiff.runtime import Runtime


class _Process(Runtime):
    """Process `index` of `count`, without a process group (only `part` is asked of it)."""

    def __init__(self, index: int, count: int):
        self._index, self._count = index, count

    @property
    def num_processes(self) -> int:
        return self._count

    @property
    def process_index(self) -> int:
        return self._index


def test_one_process_calls_fn_once_on_the_whole_list():
    calls = []

    def fn(part: list) -> list:
        calls.append(part)
        return [x * 10 for x in part]

    assert Runtime().map_parts(fn, (1, 2, 3), chunk=2) == [10, 20, 30]
    assert calls == [[1, 2, 3]]
    assert Runtime().map_parts(lambda part: ["anything", len(part)], []) == ["anything", 0]  # fn(items), unchanged


@pytest.mark.parametrize("n, chunk, count", [(10, 3, 2), (10, 3, 3), (7, 1, 3), (2, 1, 3), (0, 4, 2), (5, 8, 2), (64, 16, 8)])
def test_parts_are_contiguous_whole_chunks_covering_the_list(n, chunk, count):
    parts = [_Process(k, count).part(n, chunk) for k in range(count)]
    assert [i for p in parts for i in range(p.start, p.stop)] == list(range(n))  # in order, each item once
    for p in parts:
        assert p.start % chunk == 0 and (p.stop % chunk == 0 or p.stop == n)  # a batch is never cut
    sizes = [-(-(p.stop - p.start) // chunk) for p in parts]
    assert max(sizes) - min(sizes) <= 1  # as even as whole chunks allow


def test_bad_chunk_is_a_clear_error():
    with pytest.raises(RewardiffError, match="chunk must be at least 1"):
        _Process(0, 2).part(4, 0)
