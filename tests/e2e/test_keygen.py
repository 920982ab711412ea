"""
pinhole keygen: the relay's Ed25519 key pair, checked against OpenSSL's command line and
python's own base64 and SHA-256.

    pinhole keygen -f TMP/key [-C COMMENT]
        TMP/key (PEM, mode 0600)  -->  openssl pkey: an ED25519 key, the same public key
        stdout: ph-ed25519 BASE64 [COMMENT]
        stderr: pinhole: wrote the private key to TMP/key (mode 0600)
                pinhole: fingerprint SHA256:BASE64   <-- python: sha256 of the 32 raw bytes
    pinhole keygen --show -f TMP/key  -->  the same line, the same fingerprint

The default FILE is ~/.config/pinhole/key, or /etc/pinhole/key as root: no test writes
there; as root the default is tried as the user nobody (setpriv) with HOME a scratch
directory it owns.
"""

import base64
import hashlib
import os
import re
import shutil
import stat
import subprocess
import tempfile

import pytest

from conftest import BIN, SANITIZER_MARKS, run_pinhole

LINE_RE = re.compile(r"^ph-ed25519 [A-Za-z0-9+/]{43}=( .*)?$")
FP_RE = re.compile(r"^pinhole: fingerprint (SHA256:[A-Za-z0-9+/]{43})$", re.M)
NOBODY = 65534  # nobody and nogroup on Debian


def fingerprint(line):
    """What ssh-keygen -l would print for the key in a public key line: SHA256: and the
    unpadded base64 of the sha256 of the 32 raw key bytes."""
    raw = base64.b64decode(line.split()[1], validate=True)
    assert len(raw) == 32, f"{len(raw)} bytes in {line!r}"
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def check_made(r, path, comment=None):
    """r made a key in path: returns the public key line it printed, after checking the
    line, its fingerprint, the messages, and the file's mode and owner."""
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith("\n") and r.stdout.count("\n") == 1, repr(r.stdout)
    line = r.stdout[:-1]
    assert LINE_RE.match(line), line
    if comment is None:
        assert len(line.split(" ")) == 2, line
    else:
        assert line.endswith(" " + comment), line
    m = FP_RE.search(r.stderr)
    assert m, r.stderr
    assert m.group(1) == fingerprint(line)
    assert f"pinhole: wrote the private key to {path} (mode 0600)\n" in r.stderr
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    return line


def openssl(*args):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    return subprocess.run(["openssl", *args], capture_output=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def test_keygen(tmp_path):
    key = tmp_path / "key"
    r = run_pinhole("keygen", "-f", key)
    line = check_made(r, key)
    assert os.listdir(tmp_path) == ["key"]  # nothing else, no temporary left behind

    # a PEM private key that OpenSSL reads as Ed25519, and whose public half is the line's
    t = openssl("pkey", "-in", str(key), "-noout", "-text")
    assert t.returncode == 0, t.stderr
    assert t.stdout.decode().startswith("ED25519 Private-Key:"), t.stdout[:200]
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----\n")
    der = openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER")
    assert der.returncode == 0, der.stderr
    assert len(der.stdout) == 44  # SubjectPublicKeyInfo: 12 bytes of header, the key
    assert der.stdout[12:] == base64.b64decode(line.split()[1])

    # --show: the same line, the same fingerprint, nothing written
    before = key.read_bytes()
    s = run_pinhole("keygen", "--show", "-f", key)
    assert s.returncode == 0, s.stderr
    assert s.stdout == line + "\n"
    assert FP_RE.search(s.stderr).group(1) == fingerprint(line)
    assert "wrote" not in s.stderr
    assert key.read_bytes() == before

    # another key is another key
    r2 = run_pinhole("keygen", "--file", tmp_path / "key2")
    assert check_made(r2, tmp_path / "key2") != line


def test_keygen_ignores_umask(tmp_path):
    key = tmp_path / "key"
    r = run_pinhole("keygen", "-f", key, prefix=("sh", "-c", 'umask 000; exec "$0" "$@"'))
    check_made(r, key)


@pytest.mark.parametrize("opt", ["-C", "--comment"])
def test_keygen_comment(tmp_path, opt):
    key = tmp_path / "key"
    comment = "alice@laptop, 2024"
    r = run_pinhole("keygen", "-f", key, opt, comment)
    line = check_made(r, key, comment)
    assert line.startswith("ph-ed25519 ")
    assert FP_RE.search(r.stderr).group(1) == fingerprint(line)  # the comment is not hashed
    # the file holds no comment: --show prints the key alone, or with the -C given
    s = run_pinhole("keygen", "--show", "-f", key)
    assert s.returncode == 0, s.stderr
    assert s.stdout == line[:-len(comment) - 1] + "\n"
    s = run_pinhole("keygen", "--show", "-f", key, "-C", "again")
    assert s.stdout == line[:-len(comment)] + "again\n"


def test_keygen_never_overwrites(tmp_path):
    key = tmp_path / "key"
    first = check_made(run_pinhole("keygen", "-f", key), key)
    before, st = key.read_bytes(), os.stat(key)
    for args in (["-f", key], ["-f", key, "-C", "x"]):
        r = run_pinhole("keygen", *args)
        assert r.returncode == 1, r.stderr
        assert r.stdout == ""
        assert r.stderr == f"pinhole: keygen: {key}: exists already (not overwritten)\n"
    assert key.read_bytes() == before
    after = os.stat(key)
    assert (after.st_ino, after.st_mode, after.st_mtime_ns) == (st.st_ino, st.st_mode,
                                                                st.st_mtime_ns)
    assert run_pinhole("keygen", "--show", "-f", key).stdout == first + "\n"


def test_keygen_refuses_symlink(tmp_path):
    """A link, even to nowhere, is never followed to make a file."""
    link, target = tmp_path / "key", tmp_path / "elsewhere"
    link.symlink_to(target)
    r = run_pinhole("keygen", "-f", link)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert not target.exists()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_show_too_open(tmp_path, mode):
    key = tmp_path / "key"
    check_made(run_pinhole("keygen", "-f", key), key)
    os.chmod(key, mode)
    r = run_pinhole("keygen", "--show", "-f", key)
    assert r.returncode == 1
    assert r.stdout == ""
    assert "chmod 600" in r.stderr, r.stderr
    assert f"mode {mode:03o}" in r.stderr, r.stderr
    os.chmod(key, 0o600)
    assert run_pinhole("keygen", "--show", "-f", key).returncode == 0


def test_show_not_a_key(tmp_path):
    cases = {
        "missing": (None, "No such file or directory"),
        "adir": ("dir", "not a regular file"),
        "text": ("ph-ed25519 " + "A" * 43 + "=\n", "not an Ed25519 private key"),
    }
    for name, (content, want) in cases.items():
        p = tmp_path / name
        if content == "dir":
            p.mkdir(mode=0o700)
        elif content is not None:
            p.write_text(content)
            os.chmod(p, 0o600)
        r = run_pinhole("keygen", "--show", "-f", p)
        assert r.returncode == 1, (name, r.stderr)
        assert r.stdout == ""
        assert r.stderr.startswith(f"pinhole: keygen: {p}: "), r.stderr
        assert want in r.stderr, r.stderr


def test_show_other_key_types(tmp_path):
    """Keys OpenSSL made, but not Ed25519 ones; and an Ed25519 key with a passphrase,
    which is refused without prompting for it (on stdin, here)."""
    for name, args in (("ec", ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                       ("x25519", ["-algorithm", "X25519"]),
                       ("encrypted", ["-algorithm", "ED25519", "-aes256", "-pass",
                                      "pass:secret"])):
        p = tmp_path / name
        g = openssl("genpkey", *args, "-out", str(p))
        assert g.returncode == 0, g.stderr
        os.chmod(p, 0o600)
        r = subprocess.run([BIN, "keygen", "--show", "-f", str(p)], input="secret\n",
                           capture_output=True, text=True, timeout=10, start_new_session=True)
        for mark in SANITIZER_MARKS:
            assert mark not in r.stderr, r.stderr
        assert r.returncode == 1, (name, r.stdout, r.stderr)
        assert r.stdout == ""
        assert "pass phrase" not in r.stderr, r.stderr
        want = "encrypted" if name == "encrypted" else "not an Ed25519 private key"
        assert want in r.stderr, r.stderr


def test_keygen_missing_directory(tmp_path):
    key = tmp_path / "no" / "such" / "key"
    r = run_pinhole("keygen", "-f", key)
    assert r.returncode == 1
    assert r.stdout == ""
    assert str(key) in r.stderr and "No such file or directory" in r.stderr, r.stderr
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("args,want", [
    (["--bogus"], "unknown option '--bogus'"),
    (["-x"], "unknown option '-x'"),
    (["-f"], "-f needs a value"),
    (["--file"], "--file needs a value"),
    (["-C"], "-C needs a value"),
    (["stray"], "'stray': unexpected"),
    (["-f", "{tmp}/key", "stray"], "'stray': unexpected"),
    (["-f", ""], "-f must be 1-500 characters"),
    (["-C", ""], "-C must be 1-60 characters"),
    (["-C", "x" * 61], "-C must be 1-60 characters"),
    (["-C", "a\tb"], "one line"),
    (["-C", "a\nb"], "one line"),
    (["--show=yes"], "unknown option '--show'"),
])
def test_keygen_usage_errors(tmp_path, args, want):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_pinhole("keygen", *args)
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    assert want in r.stderr, r.stderr
    assert os.listdir(tmp_path) == []  # nothing made


def test_keygen_help():
    for args in (["keygen", "--help"], ["help", "keygen"], ["keygen", "-f", "x", "-h"]):
        r = run_pinhole(*args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("Usage: pinhole keygen [-f FILE] [-C COMMENT]\n")
        assert r.stderr == ""
    assert "keygen [-f FILE]" in run_pinhole("--help").stdout


# ---------------------------------------------------------------------------------------------
# the default FILE: ~/.config/pinhole/key, never /etc/pinhole/key in a test


@pytest.fixture
def as_user():
    """A callable: as_user(*args, home=..., xdg=None) runs pinhole as a user who is not
    root (nobody, through setpriv, when the tests run as root) with only PATH, HOME and
    the sanitizer options in its environment; and a scratch HOME that user owns,
    removed at the end."""
    made = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: the default path would be "
                        "/etc/pinhole/key, which no test may write")
        prefix = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
        probe = subprocess.run([*prefix, BIN, "--version"], capture_output=True, timeout=10)
        if probe.returncode != 0:
            pytest.skip(f"nobody cannot run {BIN}: {probe.stderr[-300:]!r}; the default "
                        "path as root would be /etc/pinhole/key, which no test may write")
    else:
        prefix = ()

    def home():
        d = tempfile.mkdtemp(prefix="ph-keygen-home-")  # in /tmp: nobody can reach it
        made.append(d)
        if prefix:
            os.chown(d, NOBODY, NOBODY)
        return d

    def run(*args, home, xdg=None):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
        for k in ("ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"):
            if k in os.environ:
                env[k] = os.environ[k]
        if xdg is not None:
            env["XDG_CONFIG_HOME"] = xdg
        return run_pinhole(*args, prefix=prefix, env=env)

    run.home = home
    run.uid = NOBODY if prefix else os.geteuid()
    yield run
    for d in made:
        shutil.rmtree(d, ignore_errors=True)


def check_default(as_user, r, base, comment=None):
    """r made BASE/pinhole/key (BASE: ~/.config or $XDG_CONFIG_HOME) as the user."""
    key = os.path.join(base, "pinhole", "key")
    line = check_made(r, key, comment)
    d = os.stat(os.path.dirname(key))
    assert stat.S_IMODE(d.st_mode) == 0o700, oct(d.st_mode)
    assert os.stat(key).st_uid == d.st_uid == as_user.uid
    return key, line


def test_default_path(as_user):
    home = as_user.home()
    os.mkdir(os.path.join(home, ".config"))
    if as_user.uid != os.geteuid():
        os.chown(os.path.join(home, ".config"), NOBODY, NOBODY)
    r = as_user("keygen", "-C", "me", home=home)
    key, line = check_default(as_user, r, os.path.join(home, ".config"), "me")
    # --show finds it there, and a second keygen leaves it alone
    s = as_user("keygen", "--show", home=home)
    assert s.returncode == 0, s.stderr
    assert s.stdout == line[:-3] + "\n"
    before = open(key, "rb").read()
    again = as_user("keygen", home=home)
    assert again.returncode == 1
    assert "exists already" in again.stderr, again.stderr
    assert open(key, "rb").read() == before


def test_default_path_xdg(as_user):
    home, xdg = as_user.home(), as_user.home()
    r = as_user("keygen", home=home, xdg=xdg)
    check_default(as_user, r, xdg)
    assert os.listdir(home) == []
    # a relative XDG_CONFIG_HOME is ignored, as the XDG base directory spec says
    os.mkdir(os.path.join(home, ".config"))
    if as_user.uid != os.geteuid():
        os.chown(os.path.join(home, ".config"), NOBODY, NOBODY)
    check_default(as_user, as_user("keygen", home=home, xdg="relative/dir"),
                  os.path.join(home, ".config"))


def test_default_show_missing(as_user):
    """--show makes nothing: no directory, no key."""
    home = as_user.home()
    r = as_user("keygen", "--show", home=home)
    assert r.returncode == 1
    assert f"{home}/.config/pinhole/key" in r.stderr, r.stderr
    assert os.listdir(home) == []


def test_default_path_fresh_home(as_user):
    home = as_user.home()
    r = as_user("keygen", home=home)
    check_default(as_user, r, os.path.join(home, ".config"))


def test_default_path_root_show_only():
    """As root the default is /etc/pinhole/key: only --show (which writes nothing) is run
    against it, and only when there is no key there to print."""
    if os.geteuid() != 0:
        pytest.skip("not root")
    if os.path.lexists("/etc/pinhole/key"):
        pytest.skip("/etc/pinhole/key exists on this host")
    exists = os.path.exists("/etc/pinhole")
    r = run_pinhole("keygen", "--show", env={"PATH": os.environ.get("PATH", ""), "HOME": "/x"})
    assert r.returncode == 1
    assert "pinhole: keygen: /etc/pinhole/key: No such file or directory" in r.stderr
    assert os.path.exists("/etc/pinhole") == exists
