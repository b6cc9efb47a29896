"""`mirrord exec` and the target's files: real CLI, real agent, a pod whose mount
namespace holds files the host does not have, its main process running as uid 1000."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mirrord.testpod import Pod, create_pod
from tests.e2e.interrupts import interrupting

MIRRORD = str(Path(sys.executable).with_name("mirrord"))
PY = "/usr/bin/python3"
BIG = "/srv/data/big.bin"
CONFIG = b"greeting: from-the-pod\n"
POD_USER = (1000, 1000)

SETUP = f"""
set -e
mkdir -p /srv/data/tree/sub /srv/rw
head -c 52428800 /dev/urandom > {BIG}
echo a > /srv/data/tree/a.txt
echo bee > /srv/data/tree/sub/b.txt
ln -s /srv/app/config.yaml /srv/data/tree/abs-link
ln -s sub/b.txt /srv/data/tree/rel-link
ln -s loop2 /srv/data/loop1
ln -s loop1 /srv/data/loop2
echo top-secret > /srv/data/secret.txt
chmod 600 /srv/data/secret.txt
echo old > /srv/rw/existing.txt
chown -R 1000:1000 /srv/rw
"""


@pytest.fixture(scope="module")
def fpod() -> Iterator[Pod]:
    if os.geteuid() != 0:
        pytest.skip("needs root (namespaces)")
    assert not os.path.exists("/srv/app/config.yaml"), "the host must not have the pod's files"
    with create_pod("files-7f9c", files={"/srv/app/config.yaml": CONFIG}, user=POD_USER) as pod:
        pod.run(["sh", "-c", SETUP], check=True, timeout=60)
        yield pod


def mirrord(pod: Pod, *cmd: str, config: dict[str, object] | None = None, tmp: Path | None = None):  # type: ignore[no-untyped-def]
    args = [MIRRORD, "exec", "-t", f"pid/{pod.main_pid}"]
    if config is not None:
        assert tmp is not None
        cfg = tmp / "mirrord.json"
        cfg.write_text(json.dumps(config))
        args += ["-f", str(cfg)]
    return subprocess.run([*args, "--", *cmd], capture_output=True, text=True, timeout=60)


def pod_sha256(pod: Pod, path: str) -> str:
    return pod.run(["sha256sum", path], check=True).stdout.split()[0].decode()


# --- reading: every kind of program ---------------------------------------------------------


def test_cat_reads_a_file_only_the_pod_has(fpod: Pod) -> None:
    r = mirrord(fpod, "cat", "/srv/app/config.yaml")
    assert r.returncode == 0, r.stderr
    assert r.stdout.encode() == CONFIG


def test_absolute_symlink_resolves_inside_the_pods_root(fpod: Pod) -> None:
    r = mirrord(fpod, "cat", "/srv/data/tree/abs-link", "/srv/data/tree/rel-link")
    assert r.returncode == 0, r.stderr
    assert r.stdout == CONFIG.decode() + "bee\n"


def test_busybox_ls_and_find_see_the_pods_tree(fpod: Pod) -> None:
    r = mirrord(fpod, "busybox", "ls", "-ln", "/srv/data/tree")
    assert r.returncode == 0, r.stderr
    assert "abs-link -> /srv/app/config.yaml" in r.stdout
    assert "rel-link -> sub/b.txt" in r.stdout
    assert any(line.startswith("d") and line.endswith(" sub") for line in r.stdout.splitlines())
    r = mirrord(fpod, "busybox", "find", "/srv/data/tree")
    assert sorted(r.stdout.split()) == sorted(
        f"/srv/data/tree{p}" for p in ("", "/a.txt", "/sub", "/sub/b.txt", "/abs-link", "/rel-link")
    ), r.stderr


def test_files_stay_right_while_mirrord_itself_is_interrupted(fpod: Pod) -> None:
    """The notify engine hands an opened copy to the program by adding an fd to its
    table. When mirrord's wait for that was cut short (here by a signal to its threads;
    a profiler's or gdb's stop does the same), the kernel used to leave the program's
    open() returning 0: find then listed stdin (ENOTDIR) or got the previous
    directory's fd for the next one."""
    fpod.run(["sh", "-c", "mkdir -p /srv/data/many && cd /srv/data/many && "
              "for d in $(seq 30); do mkdir d$d; for f in 1 2 3 4 5; do : > d$d/f$f; done; done"],
             check=True)  # fmt: skip
    walk = "for i in $(seq 25); do busybox find /srv/data/many | wc -l; done"
    p = subprocess.Popen(
        [MIRRORD, "exec", "-t", f"pid/{fpod.main_pid}", "--", "sh", "-c", walk],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "MIRRORD_ENGINE": "notify"},  # its fd answers are the subject
    )  # fmt: skip
    with interrupting(p.pid) as storm:
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert storm.sent > 1000
    assert out.split() == ["181"] * 25, err  # 1 + 30 directories + 150 files, every time
    assert "Traceback" not in err


WALKER = r"""
import os, sys, time
def walk():
    return sorted((d, sorted(ds), sorted(fs)) for d, ds, fs in os.walk("/srv/data/walk"))
print(repr(walk()), flush=True)
sys.stdin.readline()  # the pod changes meanwhile
time.sleep(2.2)  # past the cache's bound (STAT_TTL_S)
print(repr(walk()), flush=True)
"""


def test_a_walk_sees_the_pods_tree_and_its_changes_after_the_bound(fpod: Pod) -> None:
    """Listings sent ahead by the agent (the walk is one round trip per batch) show what
    the pod has; a change in the pod is seen once the cache's bound (2 s) has passed."""
    fpod.run(["sh", "-c", "mkdir -p /srv/data/walk && cd /srv/data/walk && "
              "for d in 1 2 3 4 5; do mkdir -p d$d/sub; for f in 1 2 3; do : > d$d/f$f; done; "
              "done; ln -s /srv/data/tree d2/link"], check=True)  # fmt: skip
    native = WALKER.split("print(")[0] + "print(repr(walk()))"
    p = subprocess.Popen(
        [MIRRORD, "exec", "-t", f"pid/{fpod.main_pid}", "--", PY, "-c", WALKER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None and p.stdin is not None
    first = p.stdout.readline()
    assert first.strip() == fpod.run([PY, "-c", native], check=True).stdout.decode().strip()
    fpod.run(["sh", "-c", "touch /srv/data/walk/d3/sub/new && rmdir /srv/data/walk/d4/sub"],
             check=True)  # fmt: skip
    p.stdin.write("go\n")
    p.stdin.flush()
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert out.strip() == fpod.run([PY, "-c", native], check=True).stdout.decode().strip()
    assert "new" in out and "'/srv/data/walk/d4', []" in out


POLLER = r"""
import os, sys
print(os.path.exists("/srv/rw/flag"), os.path.exists("/srv/rw/flag"), flush=True)
sys.stdin.readline()  # the pod gets the file now
import time
start = time.monotonic()
while not os.path.exists("/srv/rw/flag"):
    time.sleep(0.02)
    if time.monotonic() - start > 30:
        sys.exit("never seen")
seen = time.monotonic() - start
# A file it makes itself (write mode) is there at once, though it was missing moments ago.
mine = os.path.exists("/srv/rw/mine")
open("/srv/rw/mine", "w").close()
print(f"{seen:.2f}", mine, os.path.exists("/srv/rw/mine"), flush=True)
"""


def test_a_missing_file_is_seen_once_the_pod_has_it(fpod: Pod, tmp_path: Path) -> None:
    """ENOENT is remembered as a stat is (2 s): a program polling for a file
    the pod does not have yet sees it within that bound once it is there, and one it
    creates itself at once."""
    cfg = tmp_path / "mirrord.json"
    cfg.write_text(json.dumps({"feature": {"fs": "write"}}))
    p = subprocess.Popen(
        [MIRRORD, "exec", "-t", f"pid/{fpod.main_pid}", "-f", str(cfg), "--", PY, "-c", POLLER],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout is not None and p.stdin is not None
    try:
        assert p.stdout.readline().split() == ["False", "False"]
        fpod.run(["sh", "-c", "echo up > /srv/rw/flag"], check=True)
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        seen, mine_before, mine_after = out.split()
        assert float(seen) < 2.0 + 1.0  # the bound, and a busy machine's slack
        assert (mine_before, mine_after) == ("False", "True")
        assert fpod.run(["test", "-f", "/srv/rw/mine"]).returncode == 0
    finally:
        if p.poll() is None:
            p.kill()
        fpod.run(["rm", "-f", "/srv/rw/flag", "/srv/rw/mine"])


PY_READER = r"""
import hashlib, json, mmap, os, pathlib, stat
big = os.environ["BIG"]
with open(big, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
    mm = hashlib.sha256(m).hexdigest()
with open(big, "rb") as f:
    f.seek(1 << 20)
    chunk = f.read(16)
st = os.stat("/srv/app/config.yaml")
lst = os.lstat("/srv/data/tree/abs-link")
print(json.dumps({
    "text": open("/srv/app/config.yaml").read(),
    "mmap_sha": mm,
    "seek_chunk": chunk.hex(),
    "listdir": sorted(os.listdir("/srv/data/tree")),
    "rglob": sorted(str(p) for p in pathlib.Path("/srv/data/tree").rglob("*")),
    "size": st.st_size, "mode": oct(st.st_mode), "uid": st.st_uid,
    "fstat_size": os.fstat(os.open(big, os.O_RDONLY)).st_size,
    "islink": stat.S_ISLNK(lst.st_mode),
    "secret_uid": os.stat("/srv/rw/existing.txt").st_uid,
}))
"""


def test_python_open_listdir_stat_rglob_mmap(fpod: Pod) -> None:
    r = subprocess.run(
        [MIRRORD, "exec", "-t", f"pid/{fpod.main_pid}", "--", PY, "-c", PY_READER],
        capture_output=True, text=True, timeout=60, env=dict(os.environ, BIG=BIG),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == CONFIG.decode()
    assert out["mmap_sha"] == pod_sha256(fpod, BIG)
    want_chunk = fpod.run(
        ["sh", "-c", f"dd if={BIG} bs=1 skip={1 << 20} count=16 2>/dev/null | od -An -tx1"]
    ).stdout.decode()
    assert out["seek_chunk"] == "".join(want_chunk.split())
    assert out["listdir"] == ["a.txt", "abs-link", "rel-link", "sub"]
    assert "/srv/data/tree/sub/b.txt" in out["rglob"]
    assert out["size"] == len(CONFIG) and out["mode"] == "0o100644" and out["uid"] == 0
    assert out["fstat_size"] == 50 * 1024 * 1024
    assert out["islink"] is True
    assert out["secret_uid"] == POD_USER[0]


def test_static_go_readfile_and_walk(fpod: Pod, programs: dict[str, Path]) -> None:
    r = mirrord(fpod, str(programs["files-go"]), BIG, "/srv/data/tree")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"sha256 {pod_sha256(fpod, BIG)} size {50 * 1024 * 1024}"
    assert "/srv/data/tree/sub/b.txt -rw-r--r-- 4" in lines
    assert "/srv/data/tree/abs-link Lrwxrwxrwx 20" in lines
    assert "/srv/data/tree/sub drwxr-xr-x" in " ".join(lines)


def test_node_read_file_sync(fpod: Pod) -> None:
    js = "process.stdout.write(require('fs').readFileSync('/srv/app/config.yaml', 'utf8'))"
    r = mirrord(fpod, "node", "-e", js)
    assert r.returncode == 0, r.stderr
    assert r.stdout.encode() == CONFIG


def test_hosts_and_hostname_files_are_the_pods(fpod: Pod) -> None:
    r = mirrord(fpod, "cat", "/etc/hostname", "/etc/hosts")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("files-7f9c\n")
    assert f"{fpod.address}\tfiles-7f9c" in r.stdout


# --- modes and rules ---------------------------------------------------------------------------


def test_local_mode_reads_nothing_remote_but_dns_files(fpod: Pod, tmp_path: Path) -> None:
    cfg = {"feature": {"fs": "local"}}
    r = mirrord(fpod, "cat", "/srv/app/config.yaml", config=cfg, tmp=tmp_path)
    assert r.returncode != 0 and "No such file" in r.stderr
    # DNS is remote (the default): the resolver's files are the pod's even in local mode.
    r = mirrord(fpod, "cat", "/etc/hosts", config=cfg, tmp=tmp_path)
    assert f"{fpod.address}\tfiles-7f9c" in r.stdout
    cfg = {"feature": {"fs": "local", "network": {"dns": {"enabled": False}}}}
    r = mirrord(fpod, "cat", "/etc/hosts", config=cfg, tmp=tmp_path)
    assert r.stdout == Path("/etc/hosts").read_text()


def test_localwithoverrides_reads_only_what_rules_name(fpod: Pod, tmp_path: Path) -> None:
    cfg = {"feature": {"fs": {"mode": "localwithoverrides", "read_only": [r"^/srv/app/"]}}}
    r = mirrord(fpod, PY, "-c", CHECK_TWO, config=cfg, tmp=tmp_path)
    assert r.stdout.split() == ["remote", "missing"], r.stderr


CHECK_TWO = r"""
import os
print("remote" if os.path.exists("/srv/app/config.yaml") else "missing")
print("remote" if os.path.exists("/srv/data/tree/a.txt") else "missing")
"""


def test_not_found_and_local_rules_win_over_read_mode(fpod: Pod, tmp_path: Path) -> None:
    cfg = {
        "feature": {"fs": {"mode": "read", "not_found": r"config\.yaml$", "local": "^/srv/data"}}
    }
    r = mirrord(fpod, PY, "-c", CHECK_TWO, config=cfg, tmp=tmp_path)
    assert r.stdout.split() == ["missing", "missing"], r.stderr
    r = mirrord(fpod, PY, "-c", CHECK_TWO)
    assert r.stdout.split() == ["remote", "remote"], r.stderr


def test_mapping_rewrites_the_path(fpod: Pod, tmp_path: Path) -> None:
    cfg = {"feature": {"fs": {"mapping": {"^/wanted/(.*)$": "/srv/app/$1"}}}}
    r = mirrord(fpod, "cat", "/wanted/config.yaml", config=cfg, tmp=tmp_path)
    assert r.stdout.encode() == CONFIG, r.stderr


def test_python_interpreter_and_libraries_stay_local(fpod: Pod) -> None:
    r = mirrord(fpod, PY, "-c", "import json, email.parser, sysconfig; print('ok')")
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr


# --- writing ---------------------------------------------------------------------------------

WRITER = r"""
import os
os.mkdir("/srv/rw/newdir")
with open("/srv/rw/created.txt", "w") as f:
    f.write("created\n")
with open("/srv/rw/existing.txt", "a") as f:
    f.write("appended\n")
with open("/srv/rw/trunc.txt", "w") as f:
    f.write("0123456789")
os.truncate("/srv/rw/trunc.txt", 4)
with open("/srv/rw/renamed-from.txt", "w") as f:
    f.write("moved\n")
os.rename("/srv/rw/renamed-from.txt", "/srv/rw/renamed-to.txt")
with open("/srv/rw/gone.txt", "w") as f:
    f.write("x")
os.unlink("/srv/rw/gone.txt")
try:
    open("/srv/rw/created.txt", "x")
except FileExistsError:
    print("excl ok")
print(sorted(os.listdir("/srv/rw")))
"""


def _pod_rw(pod: Pod) -> dict[str, str]:
    code = (
        "import json, os; d = '/srv/rw'; print(json.dumps({n: open(f'{d}/{n}').read().strip() "
        "if os.path.isfile(f'{d}/{n}') else '' for n in os.listdir(d)}))"
    )
    return dict(json.loads(pod.run([PY, "-c", code], check=True).stdout))


def test_write_mode_changes_reach_the_pod(fpod: Pod, tmp_path: Path) -> None:
    before = _pod_rw(fpod)
    try:
        r = mirrord(fpod, PY, "-c", WRITER, config={"feature": {"fs": "write"}}, tmp=tmp_path)
        assert r.returncode == 0, r.stderr
        assert "excl ok" in r.stdout
        files = _pod_rw(fpod)
        assert files["created.txt"] == "created"
        assert files["existing.txt"] == "old\nappended"
        assert files["trunc.txt"] == "0123"
        assert files["renamed-to.txt"] == "moved"
        assert "renamed-from.txt" not in files and "gone.txt" not in files
        assert "newdir" in files
        owner = fpod.run(["stat", "-c", "%u", "/srv/rw/created.txt"]).stdout.decode().strip()
        assert owner == str(POD_USER[0])  # created as the pod's user
    finally:
        fpod.run(["sh", "-c", "cd /srv/rw && rm -rf created.txt trunc.txt renamed-to.txt newdir "
                  "&& echo old > existing.txt && chown 1000:1000 existing.txt"])  # fmt: skip
    assert before == {"existing.txt": "old"}


def test_read_mode_never_changes_the_pods_files(fpod: Pod, tmp_path: Path) -> None:
    before = fpod.run(["sh", "-c", "ls -lR --time-style=full-iso /srv"]).stdout
    local = tmp_path / "local"
    script = WRITER.replace("/srv/rw", str(local))
    # The same writes to a local dir work; writes to pod paths stay local (fail: no /srv/rw here).
    local.mkdir()
    (local / "existing.txt").write_text("old\n")
    r = mirrord(fpod, PY, "-c", script)
    assert r.returncode == 0, r.stderr
    r = mirrord(fpod, PY, "-c", "open('/srv/rw/existing.txt', 'a').write('x')")
    assert r.returncode != 0  # the local /srv/rw does not exist
    assert fpod.run(["sh", "-c", "ls -lR --time-style=full-iso /srv"]).stdout == before


# --- errors ---------------------------------------------------------------------------------

ERRORS = r"""
import errno, os
def code(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print(code(lambda: open("/srv/app/nope")))
print(code(lambda: open("/srv/data/secret.txt")))
print(code(lambda: open("/srv/data/loop1")))
print(code(lambda: open("/srv/app/config.yaml/x")))
print(code(lambda: os.access("/srv/data/secret.txt", os.R_OK) or os.stat("/nope-dir/x")))
"""


def test_remote_errors_are_the_programs_errors(fpod: Pod) -> None:
    r = mirrord(fpod, PY, "-c", ERRORS)
    assert r.stdout.split() == ["ENOENT", "EACCES", "ELOOP", "ENOTDIR", "ENOENT"], r.stderr


FAILED_WRITE_BACK = r"""
import os
fd = os.open("/srv/rw/readonly-later.txt", os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"data")
os.fchmod(fd, 0o444)  # remote: the pod's user can no longer write it
try:
    os.close(fd)
    print("closed")
except OSError as e:
    print("close", os.strerror(e.errno))
"""


def test_failed_write_back_is_eio(fpod: Pod, tmp_path: Path) -> None:
    try:
        r = mirrord(
            fpod, PY, "-c", FAILED_WRITE_BACK, config={"feature": {"fs": "write"}}, tmp=tmp_path
        )
        assert r.stdout.strip() == f"close {os.strerror(5)}", r.stderr
        assert "write-back of /srv/rw/readonly-later.txt failed" in r.stderr
    finally:
        fpod.run(["rm", "-f", "/srv/rw/readonly-later.txt"])


def test_cache_dir_is_removed(fpod: Pod) -> None:
    import tempfile

    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("mirrord-fs-")}
    r = mirrord(fpod, "cat", "/srv/app/config.yaml")
    assert r.returncode == 0
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("mirrord-fs-")}
    assert after <= before


def test_ptrace_engine_sees_the_same(fpod: Pod) -> None:
    """The ptrace engine (old kernels, a listener already present; MIRRORD_ENGINE=ptrace
    forces it) gives the same answers as the notify engine."""
    outputs = []
    for engine in ("notify", "ptrace"):
        env = dict(os.environ, BIG=BIG, MIRRORD_ENGINE=engine)
        args = [MIRRORD, "exec", "-t", f"pid/{fpod.main_pid}", "--", PY, "-c"]
        r1 = subprocess.run([*args, PY_READER], capture_output=True, text=True, timeout=60, env=env)
        r2 = subprocess.run([*args, ERRORS], capture_output=True, text=True, timeout=60, env=env)
        assert r1.returncode == 0, r1.stderr
        outputs.append((json.loads(r1.stdout), r2.stdout.split()))
    assert outputs[0] == outputs[1]
    assert outputs[1][1] == ["ENOENT", "EACCES", "ELOOP", "ENOTDIR", "ENOENT"]


# --- chdir and openat2 ------------------------------------------------------------------

CHDIR = r"""
import os, subprocess
os.chdir("/srv/data/tree")
print("cwd", os.getcwd(), os.readlink("/proc/self/cwd"))
print("relative", open("a.txt").read().strip(), open("sub/b.txt").read().strip())
print("listdir", sorted(os.listdir(".")))
# Children inherit the cwd; a shell's relative cd into a remote subdirectory too.
print("child", subprocess.run(["cat", "rel-link"], capture_output=True, text=True).stdout.strip())
sh = subprocess.run(["sh", "-c", "cd sub && pwd && cat b.txt"], capture_output=True, text=True)
print("shell", " ".join(sh.stdout.split()))
os.chdir("..")
print("up", os.getcwd(), open("tree/a.txt").read().strip())
for bad in ("/srv/app/config.yaml", "/srv/data/missing"):
    try:
        os.chdir(bad)
    except OSError as e:
        print("error", e.strerror)
os.chdir(os.environ["LOCAL"])
print("local", os.getcwd() == os.environ["LOCAL"], open("here.txt").read().strip())
"""


@pytest.mark.parametrize("engine", ["notify", "ptrace"])
def test_chdir_into_a_remote_directory(fpod: Pod, tmp_path: Path, engine: str) -> None:
    """The program's working directory becomes the remote directory's copy (notify engine:
    a short ptrace injection), so relative paths of every syscall and every child resolve
    there, as in the pod."""
    (tmp_path / "here.txt").write_text("local file\n")
    env = dict(os.environ, LOCAL=str(tmp_path), MIRRORD_ENGINE=engine)
    r = subprocess.run(
        [MIRRORD, "exec", "-t", f"pid/{fpod.main_pid}", "--", PY, "-c", CHDIR],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "cwd /srv/data/tree /srv/data/tree",
        "relative a bee",
        "listdir ['a.txt', 'abs-link', 'rel-link', 'sub']",
        "child bee",
        "shell /srv/data/tree/sub bee",
        "up /srv/data a",
        "error Not a directory",
        "error No such file or directory",
        "local True local file",
    ], r.stderr


OPENAT2 = r"""
import ctypes, errno, os, struct
libc = ctypes.CDLL(None, use_errno=True)
NO_SYMLINKS, BENEATH, IN_ROOT = 0x04, 0x08, 0x10
def o2(dirfd, path, resolve):
    how = struct.pack("<QQQ", os.O_RDONLY | os.O_CLOEXEC, 0, resolve)
    fd = libc.syscall(437, dirfd, path.encode(), how, 24)
    if fd < 0:
        return errno.errorcode[ctypes.get_errno()]
    try:
        return os.read(fd, 100).decode().strip()
    finally:
        os.close(fd)
d = os.open("/srv/data/tree", os.O_RDONLY | os.O_DIRECTORY)
print(o2(d, "a.txt", BENEATH))
print(o2(d, "sub/b.txt", BENEATH))
print(o2(d, "../loop1", BENEATH))
print(o2(d, "rel-link", NO_SYMLINKS))
print(o2(d, "rel-link", BENEATH))
print(o2(d, "abs-link", BENEATH))
print(o2(d, "abs-link", IN_ROOT))
print(o2(d, "/a.txt", IN_ROOT))
print(o2(d, "/srv/app/config.yaml", BENEATH))
print(o2(-100, "/srv/app/config.yaml", 0))
print(o2(-100, "/srv/data/tree/abs-link", NO_SYMLINKS))
print(o2(d, "missing", BENEATH))
"""


@pytest.mark.parametrize("engine", ["notify", "ptrace"])
def test_openat2_resolve_flags_mean_what_they_mean_in_the_pod(fpod: Pod, engine: str) -> None:
    """openat2's RESOLVE_* flags are applied in the pod's own tree: the answers are the
    pod's, symlinks and ".." included."""
    native = fpod.run([PY, "-c", OPENAT2], check=True).stdout.decode().splitlines()
    # What the pod says, for the record: absolute symlinks escape BENEATH (EXDEV) and
    # are clamped under IN_ROOT (/srv/app/config.yaml is not under the tree: ENOENT).
    assert native == [
        "a", "bee", "EXDEV", "ELOOP", "bee", "EXDEV", "ENOENT", "a", "EXDEV",
        CONFIG.decode().strip(), "ELOOP", "ENOENT",
    ]  # fmt: skip
    env = dict(os.environ, MIRRORD_ENGINE=engine)
    r = subprocess.run(
        [MIRRORD, "exec", "-t", f"pid/{fpod.main_pid}", "--", PY, "-c", OPENAT2],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == native, r.stderr
