"""vqa_core.atomic: whole files or none, refusal to overwrite, no temporary file left behind."""

from __future__ import annotations

import os
import threading

import pytest

from vqa_core.atomic import atomic_path, atomic_write


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_bytes_text_and_callable(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.txt", "é\n")
    atomic_write(tmp_path / "c.bin", lambda fh: fh.write(b"abc"), fsync=True)
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_bytes() == "é\n".encode()
    assert (tmp_path / "c.bin").read_bytes() == b"abc"
    atomic_write(tmp_path / "b.txt", "new")  # overwrite is the default
    assert (tmp_path / "b.txt").read_text() == "new"
    assert listing(tmp_path) == ["a.bin", "b.txt", "c.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("old")

    def fail(fh):
        fh.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        atomic_write(target, fail)
    assert target.read_text() == "old" and listing(tmp_path) == ["m.csv"]


def test_overwrite_false_refuses_before_and_at_commit(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("precious")
    with pytest.raises(FileExistsError):
        atomic_write(target, "x", overwrite=False)
    target.unlink()
    with pytest.raises(FileExistsError):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_text("mine")
            target.write_text("another writer got there first")
    assert target.read_text() == "another writer got there first" and listing(tmp_path) == ["m.csv"]
    target.unlink()
    atomic_write(target, "mine", overwrite=False)
    assert target.read_text() == "mine"


def test_overwrite_false_without_hard_links(tmp_path, monkeypatch):
    """Filesystems without hard links: check, then rename."""

    def no_link(src, dst):
        raise PermissionError("operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    target = tmp_path / "m.csv"
    atomic_write(target, "one", overwrite=False)
    assert target.read_text() == "one" and listing(tmp_path) == ["m.csv"]
    target.unlink()
    with pytest.raises(FileExistsError):
        with atomic_path(target, overwrite=False) as tmp:
            tmp.write_text("two")
            target.write_text("three")  # appeared while "two" was being written
    assert target.read_text() == "three" and listing(tmp_path) == ["m.csv"]


def test_temporary_names_are_hidden_siblings_unique_per_writer(tmp_path):
    target = tmp_path / "x.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first.parent == tmp_path and first.name.startswith(".x.json.") and first.suffix == ".tmp"
        assert first != second  # two threads of one process never share a temporary file
        first.write_text("1")
        second.write_text("2")
    assert target.read_text() == "1"  # the last commit wins: the outer context exits last


def test_concurrent_threads_write_whole_files(tmp_path):
    target = tmp_path / "shared.bin"
    payloads = [bytes([i]) * 200_000 for i in range(8)]
    threads = [threading.Thread(target=atomic_write, args=(target, p)) for p in payloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert target.read_bytes() in payloads and listing(tmp_path) == ["shared.bin"]
