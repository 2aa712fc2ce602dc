"""flb.atomic.write_atomic: the new content in place, no temporary file left, permissions from creation, and a
failure anywhere leaves the old content and no temporary file."""

from __future__ import annotations

import os
import stat

import pytest

from flb.atomic import write_atomic


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_a_new_file_and_leaves_nothing_else(tmp_path):
    write_atomic(tmp_path / "state.json", b'{"round": 1}')
    assert (tmp_path / "state.json").read_bytes() == b'{"round": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_replaces_an_existing_file(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"old and longer than the new content")
    write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_mode_is_the_files_from_its_creation(tmp_path, monkeypatch):
    created = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        created.append(mode)
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    write_atomic(tmp_path / "key", b"secret", 0o600)
    assert created[0] == 0o600  # the temporary file is never wider, not even before a chmod
    assert mode_of(tmp_path / "key") == 0o600


def test_without_a_mode_the_file_is_as_open_makes_it(tmp_path):
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a", b"x")
    finally:
        os.umask(umask)
    assert mode_of(tmp_path / "a") == 0o644


def test_a_failed_rename_leaves_the_old_content_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "chain.db"
    path.write_bytes(b"old")

    def failing_replace(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["chain.db"]


def test_a_failed_write_leaves_the_old_content_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "chain.db"
    path.write_bytes(b"old")

    def failing_fsync(descriptor):
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["chain.db"]


def test_without_overwrite_an_existing_file_is_kept(tmp_path):
    path = tmp_path / "signing_key"
    write_atomic(path, b"first", 0o600, overwrite=False)
    with pytest.raises(FileExistsError):
        write_atomic(path, b"second", 0o600, overwrite=False)
    assert path.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["signing_key"]


def test_the_directory_is_flushed_after_the_rename(tmp_path, monkeypatch):
    flushed = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        flushed.append(stat.S_ISDIR(os.fstat(descriptor).st_mode))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_atomic(tmp_path / "a", b"x")
    assert flushed == [False, True]  # the file's data, then the directory's entry


def test_the_run_directory_chain_file_and_keys_write_through_it(tmp_path, monkeypatch):
    """The three writers that used to have their own copy now all go through write_atomic."""
    import flb.atomic
    from chain.embedded import write_chain_file
    from flb.atomic import write_json_atomic
    from flb.audit.keystore import write_new_private_file

    written = []
    real = flb.atomic.write_atomic

    def recording(path, data, mode=None, **kwargs):
        written.append(path.name)
        real(path, data, mode, **kwargs)

    for module in ("chain.embedded", "flb.audit.keystore", "flb.atomic"):
        monkeypatch.setattr(f"{module}.write_atomic", recording)
    write_json_atomic(tmp_path / "config.json", {"a": 1})
    write_chain_file(tmp_path / "embedded_chain.db", 1, {b"k": b"v"})
    write_new_private_file(tmp_path / "admin.json", b"{}")
    assert written == ["config.json", "embedded_chain.db", "admin.json"]
    assert mode_of(tmp_path / "admin.json") == 0o600
