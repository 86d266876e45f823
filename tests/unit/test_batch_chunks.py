"""A batch is expanded in chunks that start small, so its first lines reach a worker at once,
and grow to the full chunk, so a long file costs few transactions."""

from __future__ import annotations

from worker.control.batches import CHUNK_LINES, FIRST_CHUNK_LINES, _chunks


def test_chunks_double_from_the_first_size_up_to_the_most() -> None:
    items = iter(range(2000))
    sizes = [len(chunk) for chunk in _chunks(items, FIRST_CHUNK_LINES, CHUNK_LINES)]  # type: ignore[arg-type]
    assert sizes[:5] == [32, 64, 128, 256, 500]
    assert set(sizes[4:-1]) == {CHUNK_LINES}
    assert sum(sizes) == 2000


def test_every_item_comes_once_in_order() -> None:
    chunks = list(_chunks(iter(range(100)), 3, 10))  # type: ignore[arg-type]
    assert [len(c) for c in chunks] == [3, 6, 10, 10, 10, 10, 10, 10, 10, 10, 10, 1]
    assert [i for c in chunks for i in c] == list(range(100))


def test_nothing_gives_no_chunk() -> None:
    assert list(_chunks(iter([]), FIRST_CHUNK_LINES, CHUNK_LINES)) == []
