"""How ``nnx.save`` treats the file system: links, modes, long names, stale temporaries.

Like ``np.savez`` and ``torch.save`` (which open the path for writing): a symbolic link
is written through to its target, hard links stay linked, an existing file keeps its
mode and a new one gets the umask's; and, unlike them, the write stays atomic: a
temporary file next to the target, whose name fits any legal file name, is moved into
place, and the temporaries of killed writers are removed by the next save.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import nnx
from nnx import atomic

pytestmark = pytest.mark.skipif(os.name == "nt", reason="POSIX links, modes and signals")
ROOT = Path(__file__).resolve().parents[1]


def net(seed: int) -> nnx.Sequential:
    nnx.manual_seed(seed)
    return nnx.Sequential(nnx.Linear(3, 4), nnx.ReLU(), nnx.Linear(4, 2))


def same(a: nnx.Module, b: nnx.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(np.array_equal(sa[k], sb[k]) for k in sa)


def test_symlink_is_written_through(tmp_path):
    target = tmp_path / "real" / "model.npz"
    target.parent.mkdir()
    nnx.save(net(0), target)
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    nnx.save(net(1), link)
    assert link.is_symlink(), "the link was replaced by a regular file"
    assert same(nnx.load(target), net(1))
    assert sorted(os.listdir(target.parent)) == ["model.npz"]


def test_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.npz"
    link.symlink_to(tmp_path / "new.npz")
    nnx.save(net(0), link)
    assert link.is_symlink() and (tmp_path / "new.npz").is_file()


def test_hard_links_stay_linked(tmp_path):
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    nnx.save(net(0), a)
    os.link(a, b)
    nnx.save(net(1), a)
    assert os.stat(a).st_ino == os.stat(b).st_ino
    assert same(nnx.load(b), net(1))
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]


def _bigger_net() -> nnx.Sequential:
    nnx.manual_seed(2)
    return nnx.Sequential(nnx.Linear(3, 400), nnx.ReLU(), nnx.Linear(400, 2))


def test_hard_linked_file_is_left_whole_when_the_disk_is_full(tmp_path, monkeypatch):
    """A file with several links is rewritten in place, the one case that is not atomic:
    without room for it to grow, it is refused before the file is touched."""
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    nnx.save(net(0), a)
    os.link(a, b)
    before = a.read_bytes()
    full = os.statvfs_result((4096, 4096, 10**6, 0, 0, 10**6, 0, 0, 0, 255))
    monkeypatch.setattr(os, "statvfs", lambda path: full)
    with pytest.raises(OSError, match="no room to rewrite .* it was left as it was") as info:
        nnx.save(_bigger_net(), a)
    assert info.value.errno == errno.ENOSPC
    assert a.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]


def test_hard_linked_file_failing_mid_copy_keeps_the_new_content(tmp_path, monkeypatch):
    """If the in-place copy fails anyway, the complete new file is kept next to it."""
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    nnx.save(net(0), a)
    os.link(a, b)

    def broken(src, dst, length=0):
        dst.write(src.read(100))
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(shutil, "copyfileobj", broken)
    with pytest.raises(OSError, match=r"the complete new content is in '.*a\.npz\.new'"):
        nnx.save(net(1), a)
    monkeypatch.undo()
    assert same(nnx.load(tmp_path / "a.npz.new"), net(1))


def test_existing_mode_is_kept(tmp_path):
    path = tmp_path / "m.npz"
    nnx.save(net(0), path)
    os.chmod(path, 0o640)
    nnx.save(net(1), path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_file_gets_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        nnx.save(net(0), tmp_path / "m.npz")
        np.savez(tmp_path / "ref.npz", a=np.zeros(1))
    finally:
        os.umask(old)
    got = stat.S_IMODE(os.stat(tmp_path / "m.npz").st_mode)
    assert got == 0o666 & ~umask == stat.S_IMODE(os.stat(tmp_path / "ref.npz").st_mode)


def test_longest_legal_name(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    path = tmp_path / ("m" * (name_max - 4) + ".npz")
    nnx.save(net(0), path)
    assert same(nnx.load(path), net(0))


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    path = tmp_path / "m.npz"
    nnx.save(net(0), path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tag = atomic._tag(path.name)
    stale = tmp_path / f".nnx-{tag}-{dead.pid}-0badc0de.tmp"
    stale.write_bytes(b"PK half a file")
    other_target = tmp_path / f".nnx-{atomic._tag('other.npz')}-{dead.pid}-0badc0de.tmp"
    other_target.write_bytes(b"x")
    alive = tmp_path / f".nnx-{tag}-{os.getppid()}-0badc0de.tmp"  # a live writer's
    alive.write_bytes(b"x")
    nnx.save(net(1), path)
    assert not stale.exists()
    assert other_target.exists() and alive.exists()  # not ours to remove


def test_kill_9_during_saves_leaves_no_temporary_after_the_next_save(tmp_path):
    """A writer killed at random moments; the next save removes whatever it left."""
    path = tmp_path / "m.npz"
    code = textwrap.dedent(
        f"""
        import nnx
        nnx.manual_seed(0)
        net = nnx.Sequential(nnx.Linear(300, 300), nnx.Linear(300, 300))
        print("ready", flush=True)
        while True:
            nnx.save(net, {str(path)!r})
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    rng = np.random.default_rng(0)
    for _ in range(4):
        p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
        assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.05, 0.3)))
        p.send_signal(signal.SIGKILL)
        p.wait()
        p.stdout.close()
    nnx.load(path)  # the last complete save is there
    nnx.save(net(1), path)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_save_refuses_a_directory_target(tmp_path):
    (tmp_path / "d.npz").mkdir()
    with pytest.raises(IsADirectoryError, match="not a regular file"):
        nnx.save(net(0), tmp_path / "d.npz")
