"""The Debian package (debian/): built, checked by lintian, installed over the Perl original,
used, purged.

`dpkg-buildpackage -us -uc -b` runs in a copy of the work tree (the build leaves nothing in
it), with the environment of a root shell (Debian's /usr/bin/python3, not a pyenv or
virtualenv python3 first on PATH). lintian must find no error and no warning. The package is
installed with `apt-get install ./hapolicy_*.deb` into a copy-on-write copy of this machine's
root (scripts/testkit/overlay.py): the same installed packages, the Perl original `hapolicy` among
them when it is there (CI installs it), so apt upgrades over it as on a postmaster's server,
and the same maintainer scripts, users and init script; but every change lands in a tmpfs
that goes with the test. So this machine's /usr/sbin/hapolicy stays the Perl original all
along, for the tests that compare against it while this one runs (on a developer's machine
other suites may run beside it), and a test that dies half-way leaves nothing changed; the
last test checks it. scripts/run-tests runs this module (marker debian_package) after the
others, only so that its build, lintian and apt take no CPU from the tests that time things.

In the copy: policy-rc.d is removed (as on a real server, the postinst runs the init script,
which must not fail while /etc/hapolicy.conf has no service), /run/hapolicy/spawn is the user
hapolicy's, /usr/sbin/hapolicy is ours and answers a spawn-mode request as master.cf's
`user=hapolicy` (its state file in /run/hapolicy/spawn) and as the original's `user=nobody`,
`man -l` renders every page without a groff warning, the init script does nothing until configured, then starts the
daemon with its workers as user hapolicy (seen in /proc) and stops it, hapolicyctl finds the
control socket of the packaged config, and `dpkg --purge` removes the files, the config files,
the user and its group.

An upgrade of the package upgrades a running daemon in place: a second build of the same copy
with one changelog entry more (its version also in hapolicy/__init__.py and pyproject.toml, so
that the running code says which it is) is installed over the first while persistent clients
keep asking; the postinst's `invoke-rc.d hapolicy upgrade` hands the sockets to a new master
that runs the new files, no connection is closed, every request answered; the old master
leaves once its clients have. Installing the first again (a downgrade) restarts the daemon,
as debhelper would.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from testkit.backends import FakeBackend
from testkit.daemon import short_tmpdir
from testkit.load import Load
from testkit.overlay import NICE, OverlayRoot
from testkit.packages import in_ci, require_packages
from testkit.ports import HOST, free_port
from testkit.processes import alive, cmdline, wait_children, workers_of
from testkit.protocol import PolicyClient, request
from testkit.repo import REPO
from testkit.syslog import SyslogReceiver
from testkit.wait import wait_for

from hapolicy import __version__, manpage
from hapolicy.config.option import COMMAND
from hapolicy.config.options import OPTIONS
from hapolicy.monitor.commands import COMMANDS

#: what the build and the checks need (scripts/run-tests installs them)
BUILD_DEPS = ("build-essential", "debhelper", "dh-python", "pybuild-plugin-pyproject",
              "python3-all", "python3-setuptools", "python3-setproctitle",
              "python3-prometheus-client", "lintian", "man-db")
#: a root shell's environment: no PYTHONPATH, no pyenv on PATH, nothing of pytest's
BUILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache",
                                     "mutants", ".mutmut-cache", ".pybuild")
#: debian/ as committed
DEBIAN_SOURCES = {f"debian/{name}" for name in (
    "adapt", "changelog", "clean", "control", "copyright", "hapolicy.default", "hapolicy.docs",
    "hapolicy.examples", "hapolicy.install", "hapolicy.manpages", "hapolicy.postinst",
    "hapolicy.postrm", "hapolicy.tmpfiles", "rules", "sbin", "source")}
#: the second build's version: higher than the first's for dpkg
NEWER = f"{__version__}+upgrade1"
PAGES = {"hapolicy.8": "man8", "hapolicyctl.8": "man8", "hapolicy.conf.5": "man5"}
SERVICE_LINE = re.compile(r"^\s*service\s*=", re.M)

pytestmark = pytest.mark.debian_package


@dataclass
class Built:
    deb: Path
    work: Path
    seconds: float
    log: str


def require_root() -> None:
    if os.geteuid() != 0:
        if in_ci():
            pytest.fail("CI=true: the package test needs root (it mounts an overlay)")
        pytest.skip("needs root: builds a package and mounts an overlay")


def build_leftovers() -> set[str]:
    """What a build in the work tree would leave there (debian/rules's and debhelper's files)."""
    found = {str(p.relative_to(REPO)) for p in (REPO / "debian").iterdir()} - DEBIAN_SOURCES
    return found | {name for name in (".pybuild", "build") if (REPO / name).exists()}


def host_state() -> dict[str, str]:
    """What the package would change on this machine, were it installed here."""
    def digest(path: str) -> str:
        try:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError as exc:
            return f"absent: {exc.strerror}"

    def out(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout

    return {"/usr/sbin/hapolicy": digest("/usr/sbin/hapolicy"),
            "/etc/hapolicy.conf": digest("/etc/hapolicy.conf"),
            "dpkg": out("dpkg-query", "-W", "-f=${Version} ${db:Status-Status}", "hapolicy"),
            "passwd": out("getent", "passwd", "hapolicy"),
            "group": out("getent", "group", "hapolicy")}


@pytest.fixture(scope="module")
def package():
    require_root()
    require_packages(*BUILD_DEPS)
    work = short_tmpdir()
    work.chmod(0o755)  # the copy's user nobody reaches the share under it
    leftovers = build_leftovers()
    try:
        src = work / "src"
        shutil.copytree(REPO, src, ignore=COPY_IGNORE, symlinks=True)
        start = time.monotonic()
        done = subprocess.run([*NICE, "dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src,
                              env={**BUILD_ENV, "HOME": str(work)}, capture_output=True,
                              text=True, timeout=600, check=False)
        seconds = time.monotonic() - start
        log = done.stdout + done.stderr
        assert done.returncode == 0, log[-6000:]
        debs = sorted(work.glob("hapolicy_*_all.deb"))
        assert [d.name for d in debs] == [f"hapolicy_{__version__}_all.deb"], log[-3000:]
        print(f"dpkg-buildpackage: {seconds:.1f} s")
        yield Built(debs[0], work, seconds, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert build_leftovers() == leftovers, "the build left files in the work tree"


def bump_version(src: Path) -> None:
    """The copy's changelog gets an entry NEWER on top (dated as the last one), and the Python
    package says NEWER too."""
    changelog = src / "debian" / "changelog"
    text = changelog.read_text()
    signed = re.search(r"^ -- .*$", text, re.M).group(0)
    changelog.write_text(f"hapolicy ({NEWER}) unstable; urgency=medium\n\n"
                         f"  * A newer build, for the test of an upgrade.\n\n{signed}\n\n{text}")
    for path, before, after in (("hapolicy/__init__.py", f'__version__ = "{__version__}"',
                                 f'__version__ = "{NEWER}"'),
                                ("pyproject.toml", f'\nversion = "{__version__}"\n',
                                 f'\nversion = "{NEWER}"\n')):
        text = (src / path).read_text()
        assert text.count(before) == 1, path
        (src / path).write_text(text.replace(before, after))


@pytest.fixture(scope="module")
def newer(package) -> Path:
    """The package again, version NEWER: built in the first's copy (nocheck: the first build
    ran the build's checks on the same code)."""
    src = package.work / "src"
    bump_version(src)
    done = subprocess.run([*NICE, "dpkg-buildpackage", "-us", "-uc", "-b"], cwd=src,
                          env={**BUILD_ENV, "HOME": str(package.work),
                               "DEB_BUILD_OPTIONS": "nocheck"},
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    deb = package.work / f"hapolicy_{NEWER}_all.deb"
    assert deb.exists(), sorted(p.name for p in package.work.iterdir())
    return deb


def dpkg_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_package_builds_with_debians_python_and_lintian_finds_nothing(package):
    assert "/usr/bin/python3 -m hapolicy.manpage" in package.log  # the pages made at build
    assert re.search(r"pybuild .*python3\.\d+", package.log), package.log[-3000:]
    depends = dpkg_field(package.deb, "Depends")
    for name in ("adduser", "python3-setproctitle", "python3-prometheus-client", "python3:any"):
        assert name in depends, depends
    assert "init-system-helpers" in dpkg_field(package.deb, "Pre-Depends")
    start = time.monotonic()
    done = subprocess.run([*NICE, "lintian", "--fail-on", "error,warning", "--display-info",
                           "--pedantic", str(package.deb)], capture_output=True, text=True,
                          timeout=300, check=False, env={**BUILD_ENV, "HOME": str(package.work)})
    print(f"lintian: {time.monotonic() - start:.1f} s\n{done.stdout}")
    assert done.returncode == 0, done.stdout + done.stderr
    tags = [line for line in done.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    assert tags == [], tags  # not even info or pedantic tags: fix or explain each in debian/


def test_the_package_holds_the_programs_units_config_and_generated_pages(package):
    listing = subprocess.run(["dpkg-deb", "-c", str(package.deb)], capture_output=True,
                             text=True, check=True).stdout
    paths = {line.split()[5].lstrip(".") for line in listing.splitlines()}
    for path in ("/usr/sbin/hapolicy", "/usr/sbin/hapolicyctl", "/etc/hapolicy.conf",
                 "/etc/default/hapolicy", "/etc/init.d/hapolicy",
                 "/lib/systemd/system/hapolicy.service", "/lib/systemd/system/hapolicy.socket",
                 "/usr/lib/python3/dist-packages/hapolicy/cli.py",
                 "/usr/share/doc/hapolicy/copyright",
                 "/usr/share/doc/hapolicy/examples/hapolicy.conf.example",
                 "/usr/share/doc/hapolicy/examples/prometheus/hapolicy.rules.yml",
                 "/usr/share/doc/hapolicy/examples/prometheus/hapolicy.rules.test.yml",
                 "/usr/share/doc/hapolicy/examples/grafana/hapolicy.json",
                 "/usr/lib/tmpfiles.d/hapolicy.conf",
                 *(f"/usr/share/man/{d}/{p}.gz" for p, d in PAGES.items())):
        assert path in paths, path
    assert not any(p.startswith(("/usr/bin/", "/usr/local/")) for p in paths), sorted(paths)
    for doc in ("README.md", "docs/configuration.md", "docs/health.md", "docs/operating.md",
                "docs/security.md", "docs/performance.md", "docs/compat.md"):
        assert any(p.startswith(f"/usr/share/doc/hapolicy/{doc}") for p in paths), doc  # .gz
    tree = package.work / "x"
    subprocess.run(["dpkg-deb", "-R", str(package.deb), str(tree)], check=True)
    conffiles = (tree / "DEBIAN" / "conffiles").read_text().split()
    assert conffiles == ["/etc/default/hapolicy", "/etc/hapolicy.conf", "/etc/init.d/hapolicy"]

    # the pages are the generator's, dated by debian/changelog (SOURCE_DATE_EPOCH)
    changelog = (REPO / "debian" / "changelog").read_text()
    date = re.search(r"^ -- .*?>  (.*)$", changelog, re.M).group(1)
    epoch = str(int(parsedate_to_datetime(date).timestamp()))
    old = os.environ.get("SOURCE_DATE_EPOCH")
    os.environ["SOURCE_DATE_EPOCH"] = epoch
    try:
        for page, directory in PAGES.items():
            packaged = gzip.decompress((tree / f"usr/share/man/{directory}/{page}.gz").read_bytes())
            assert packaged.decode() == manpage.PAGES[page](), page
    finally:
        if old is None:
            del os.environ["SOURCE_DATE_EPOCH"]
        else:
            os.environ["SOURCE_DATE_EPOCH"] = old

    # the packaged programs, init script and units: /usr/sbin/hapolicy, Debian's python3,
    # the user hapolicy
    for name in ("hapolicy", "hapolicyctl"):
        assert (tree / "usr/sbin" / name).read_text().startswith("#!/usr/bin/python3 -I\n")
    init = (tree / "etc/init.d/hapolicy").read_text()
    assert "\nDAEMON=/usr/sbin/hapolicy\n" in init
    assert '\nDAEMON_ARGS="--user hapolicy --group hapolicy"\n' in init
    unit = (tree / "lib/systemd/system/hapolicy.service").read_text()
    assert "\nExecStart=/usr/sbin/hapolicy -c /etc/hapolicy.conf --user hapolicy --group " \
           "hapolicy\n" in unit
    assert "\nExecCondition=" in unit
    assert "\nNotifyAccess=all\n" in unit  # the new master of an upgrade tells its MAINPID
    assert "\n    upgrade)\n" in init
    assert '\nDAEMON_ARGS="--user hapolicy --group hapolicy"\n' in \
        (tree / "etc/default/hapolicy").read_text()
    # the config file: the example's settings, its pools commented out, the control socket
    conf = (tree / "etc/hapolicy.conf").read_text()
    assert not SERVICE_LINE.search(conf) and not re.search(r"^\[pool", conf, re.M)
    assert "\ncontrol = /run/hapolicy/control\n" in conf
    assert "\n#[pool grey]\n" in conf


def uncomment_pools(conf: str) -> str:
    """The packaged config file with its example pools given back (as a postmaster would)."""
    head, marker, pools = conf.partition("# --- pools")
    return head + marker + re.sub(r"^#(?=[\[a-z])", "", pools, flags=re.M)


def rendered(overlay: OverlayRoot, path: str) -> tuple[str, str]:
    """`man -l PATH` in the copy as plain text, and groff's warnings."""
    env = {"MANWIDTH": "200", "MANPAGER": "cat"}
    done = overlay.run(["man", "--warnings", "-l", path], env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    return re.sub(r".\x08", "", done.stdout), done.stderr


def ask_spawned(overlay: OverlayRoot, argv: list[str]) -> tuple[str, int]:
    """One request to a process the copy runs as spawn(8) would: its answer and exit status."""
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen(overlay.argv(argv), stdin=theirs, stdout=theirs,
                            stderr=subprocess.PIPE)
    theirs.close()
    client = PolicyClient.from_socket(ours)
    try:
        answer = client.ask(request(), timeout=20)
    finally:
        client.close()  # end of file: it exits
    try:
        status = proc.wait(20)
    finally:
        stderr = proc.stderr.read()
        proc.stderr.close()
    assert stderr == b"", stderr
    return answer, status


def passwd_entry(overlay: OverlayRoot, database: str, name: str) -> list[str]:
    done = overlay.run(["getent", database, name])
    return done.stdout.strip().split(":") if done.returncode == 0 else []


def status_ids(pid: int) -> tuple[list[int], list[int]]:
    """The real, effective, saved and fs uids and gids of pid."""
    fields = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            fields[key] = [int(v) for v in value.split()] if key in ("Uid", "Gid") else value
    return fields["Uid"], fields["Gid"]


def as_a_sysvinit_server(overlay: OverlayRoot) -> None:
    """As on a server booted with sysvinit (runlevel 2) and without a policy-rc.d: the
    maintainer scripts run the init script."""
    overlay.file("/usr/sbin/policy-rc.d").unlink(missing_ok=True)
    runlevel = overlay.file("/sbin/runlevel")
    if runlevel.is_symlink() or runlevel.exists():
        runlevel.unlink()
    runlevel.write_text("#!/bin/sh\necho N 2\n")
    runlevel.chmod(0o755)


def configure(overlay: OverlayRoot, log: SyslogReceiver, backend_port: int) -> int:
    """The packaged /etc/hapolicy.conf with an address, the test's syslog, two workers and
    one service; the port it listens on."""
    conf = overlay.file("/etc/hapolicy.conf")
    port = free_port()
    configured = conf.read_text().replace("\nlisten =\n", f"\nlisten = {HOST}:{port}\n")
    configured = configured.replace("\nsyslog-socket = /dev/log\n",
                                    f"\nsyslog-socket = {log.path}\n")
    assert configured.count(str(port)) == 1 and log.path in configured
    conf.write_text(configured + f"workers = 2\nservice = A={HOST}:{backend_port}\n")
    return port


def test_installed_over_the_original_it_serves_spawn_and_the_init_script_then_purges(package):
    before = host_state()
    share = package.work / "share"
    share.mkdir(mode=0o755)
    deb = share / package.deb.name
    shutil.copy(package.deb, deb)
    log = SyslogReceiver(share / "log")
    start = time.monotonic()
    overlay = OverlayRoot(package.work / "ovl", share)
    try:
        run = overlay.run
        original = run(["dpkg-query", "-W", "-f=${Version}", "hapolicy"]).stdout
        if in_ci():
            assert original.startswith("1."), "scripts/run-tests installs the Perl original"
        # the postinst runs the init script, which must not fail (nor start anything) while
        # the config file has no service
        as_a_sysvinit_server(overlay)

        done = run(["apt-get", "install", "-y", "-q", "--no-install-recommends", str(deb)],
                   timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr
        if original:
            assert f"Unpacking hapolicy ({__version__}) over ({original})" in done.stdout
            assert not overlay.file("/usr/share/man/man1/hapolicy.1.gz").exists()
        assert "not starting: no service in /etc/hapolicy.conf" in done.stdout, done.stdout
        assert overlay.processes() == []
        assert run(["dpkg-query", "-W", "-f=${Version}", "hapolicy"]).stdout == __version__
        assert overlay.file("/usr/sbin/hapolicy").read_text().startswith("#!/usr/bin/python3")
        user = passwd_entry(overlay, "passwd", "hapolicy")
        group = passwd_entry(overlay, "group", "hapolicy")
        assert user and group and int(user[2]) < 1000 and user[3] == group[2], (user, group)
        assert user[6] in ("/usr/sbin/nologin", "/bin/false"), user
        uid, gid = int(user[2]), int(group[2])
        # the units as installed: their programs and man pages (Documentation=) are there
        done = run(["systemd-analyze", "verify", "/lib/systemd/system/hapolicy.socket",
                    "/lib/systemd/system/hapolicy.service"], timeout=60)
        assert done.returncode == 0 and done.stderr == "", done

        # spawn mode's state directory: the user's own, in root's /run/hapolicy
        spawn_dir = overlay.file("/run/hapolicy/spawn")
        st = spawn_dir.lstat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (uid, gid, 0o755), st
        assert overlay.file("/run/hapolicy").stat().st_uid == 0

        with FakeBackend(action="FROM-A") as backend:
            # spawn(8) mode through /usr/sbin/hapolicy, as the README's master.cf entry runs
            # it (user=hapolicy), its health shared in /run/hapolicy/spawn/; and as an entry
            # of the original runs it (user=nobody), its health in /tmp/hapolicy-65534/
            for user, where in (("hapolicy", spawn_dir),
                                ("nobody", overlay.file("/tmp/hapolicy-65534"))):
                answer, status = ask_spawned(overlay, [
                    "runuser", "-u", user, "--", "/usr/sbin/hapolicy", "-l",
                    "-s", f"A={HOST}:{backend.port}:10", "-d", "DEFER_IF_PERMIT unavailable"])
                assert (answer, status) == ("action=FROM-A\n\n", 0), user
                assert list(where.glob("health-*")), user

            # every page renders, without a warning, and holds what it must
            for page, directory in PAGES.items():
                text, warnings = rendered(overlay, f"/usr/share/man/{directory}/{page}.gz")
                assert warnings == "", (page, warnings)
                assert text.startswith(page.rpartition(".")[0].upper()), text[:200]
                if page == "hapolicy.8":
                    for option in OPTIONS:
                        assert option.flags[-1] in text, option.flags
                elif page == "hapolicy.conf.5":
                    for option in OPTIONS:
                        if option.scope != COMMAND and option.key:
                            assert f"{option.name} =" in text, option.name
                else:
                    for usage, _ in COMMANDS:
                        assert usage in text, usage
            where = run(["man", "-w", "hapolicy"])
            assert where.stdout.strip() == "/usr/share/man/man8/hapolicy.8.gz", where

            # the init script: nothing until configured
            done = run(["/etc/init.d/hapolicy", "start"])
            assert done.returncode == 0 and "not starting" in done.stdout, done
            assert overlay.processes() == []
            # the packaged file's example pools, given back, are a valid configuration
            conf = overlay.file("/etc/hapolicy.conf")
            packaged = conf.read_text()
            overlay.file("/tmp/pools.conf").write_text(uncomment_pools(packaged))
            done = run(["/usr/sbin/hapolicy", "-c", "/tmp/pools.conf", "--check-config"])
            assert done.returncode == 0 and "[pool grey]" in done.stdout, done

            # configured: one service, an address, the test's syslog
            port = configure(overlay, log, backend.port)
            done = run(["/etc/init.d/hapolicy", "start"], timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr + log.text()
            master = int(overlay.file("/run/hapolicy.pid").read_text())
            assert cmdline(master) == "hapolicy: master"
            assert master in overlay.processes()
            workers = wait_children(master, 2)
            for worker in workers:
                wait_for(lambda w=worker: cmdline(w).startswith("hapolicy: worker"), 10,
                         what=f"worker {worker} ready")
                assert status_ids(worker) == ([uid] * 4, [gid] * 4), worker
            with PolicyClient(HOST, port) as client:
                assert client.ask(request()) == "action=FROM-A\n\n"
            done = run(["/usr/sbin/hapolicyctl", "status"])  # /run/hapolicy/control
            assert done.returncode == 0, done
            assert re.search(rf"^default\s+A\s+{HOST}:{backend.port}\s+up\s+enabled",
                             done.stdout, re.M), done.stdout
            assert run(["/etc/init.d/hapolicy", "status"]).returncode == 0
            done = run(["/etc/init.d/hapolicy", "stop"], timeout=60)
            assert done.returncode == 0, done
            wait_for(lambda: not alive(master) and not any(alive(w) for w in workers), 10,
                     what="the daemon gone")
            assert not overlay.file("/run/hapolicy.pid").exists()
            assert "Traceback" not in log.text()

        # purge: files, config files, links, the user and its group
        done = run(["dpkg", "--purge", "hapolicy"], timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        for path in ("/usr/sbin/hapolicy", "/usr/sbin/hapolicyctl", "/etc/hapolicy.conf",
                     "/etc/default/hapolicy", "/etc/init.d/hapolicy", "/run/hapolicy",
                     "/lib/systemd/system/hapolicy.service",
                     "/etc/systemd/system/multi-user.target.wants/hapolicy.service",
                     "/usr/lib/python3/dist-packages/hapolicy",
                     "/usr/share/man/man8/hapolicy.8.gz", "/usr/share/doc/hapolicy"):
            assert not os.path.lexists(overlay.file(path)), path
        assert not list(overlay.file("/etc").glob("rc?.d/*hapolicy"))
        assert passwd_entry(overlay, "passwd", "hapolicy") == []
        assert passwd_entry(overlay, "group", "hapolicy") == []
        done = run(["dpkg-query", "-W", "-f=${db:Status-Status}", "hapolicy"])
        assert done.stdout in ("", "not-installed"), done
    finally:
        overlay.close()
        log.close()
        print(f"install, use and purge in the overlay: {time.monotonic() - start:.1f} s")
    # this machine never saw any of it
    assert host_state() == before


def installed(overlay: OverlayRoot, deb: Path) -> str:
    """`dpkg -i` the .deb in the copy (the maintainer scripts apt would run, without the 4 s
    apt takes to read its lists: its dependencies are there); its output."""
    done = overlay.run(["dpkg", "-i", str(deb)], timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr
    return done.stdout


def started(log: SyslogReceiver, pid: int, version: str) -> None:
    """The master pid said at its start that it runs hapolicy version."""
    log.wait(f"hapolicy[{pid}]: master started: hapolicy {version}, listening on", timeout=30)


def test_an_upgrade_of_the_package_upgrades_the_running_daemon_in_place(package, newer):
    before = host_state()
    share = package.work / "share-upgrade"
    share.mkdir(mode=0o755)
    first, second = share / package.deb.name, share / newer.name
    shutil.copy(package.deb, first)
    shutil.copy(newer, second)
    log = SyslogReceiver(share / "log")
    overlay = OverlayRoot(package.work / "ovl-upgrade", share)
    load = None
    try:
        as_a_sysvinit_server(overlay)
        original = overlay.run(["dpkg-query", "-W", "-f=${Version}", "hapolicy"]).stdout
        output = installed(overlay, first)
        if original:
            assert f"Unpacking hapolicy ({__version__}) over ({original})" in output
        # each answer after 50 ms: requests in flight all along, and CPU left to apt
        with FakeBackend(mode="echo", attr="recipient", delay=0.05) as echo:
            port = configure(overlay, log, echo.port)
            done = overlay.run(["/etc/init.d/hapolicy", "start"], timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr + log.text()
            old = int(overlay.file("/run/hapolicy.pid").read_text())
            old_workers = wait_children(old, 2)
            started(log, old, __version__)
            load = Load([socket.create_connection((HOST, port)) for _ in range(20)], 0,
                        name="P").start()
            wait_for(lambda: load.answered > 100, 10, what="answers before the upgrade")

            start = time.monotonic()
            output = installed(overlay, second)
            print(f"\ndpkg -i of the newer package: {time.monotonic() - start:.1f} s")
            assert f"Unpacking hapolicy ({NEWER}) over ({__version__})" in output, output
            new = int(overlay.file("/run/hapolicy.pid").read_text())
            assert f"hapolicy: upgraded in place: the new master (pid {new}) serves" in output, \
                output + log.text()
            assert new != old and alive(new) and new in overlay.processes()
            # the new master runs the new files: it says the new version
            started(log, new, NEWER)
            assert overlay.run(["/usr/sbin/hapolicy", "--version"]).stdout == f"hapolicy {NEWER}\n"
            log.wait(f"upgrade: new master {new} serves")
            assert cmdline(old) == "hapolicy: old master (retiring)"
            assert cmdline(new) == "hapolicy: master"
            assert not set(wait_children(new, 2)) & set(old_workers)
            with PolicyClient(HOST, port) as client:
                assert client.ask(request(recipient="new@example.org")) == \
                    "action=new@example.org\n\n"
            # the old workers serve on their clients: none is closed, every request answered
            during = load.finish_after(100)
            print(f"package upgraded in place: {load.answered} answers on 20 connections, "
                  f"{during} of them by the end of the install")
            load.close()
            load = None
            wait_for(lambda: not alive(old) and not any(alive(w) for w in old_workers), 20,
                     what="the old master gone with its clients")
            done = overlay.run(["/usr/sbin/hapolicyctl", "status"])  # the control socket, handed
            assert done.returncode == 0 and re.search(r"^default\s+A\s", done.stdout, re.M), done

            # a downgrade restarts it (debhelper's way)
            output = installed(overlay, first)
            assert "upgraded in place" not in output, output
            restarted = int(overlay.file("/run/hapolicy.pid").read_text())
            assert restarted != new
            started(log, restarted, __version__)
            wait_for(lambda: not alive(new), 20, what="the newer master stopped")
            assert workers_of(restarted)
            done = overlay.run(["/etc/init.d/hapolicy", "stop"], timeout=60)
            assert done.returncode == 0, done
            assert "Traceback" not in log.text()
    finally:
        if load is not None:
            load.stop()
            load.close()
        overlay.close()
        log.close()
    assert host_state() == before
