"""Support of hapolicy's tests and scripts (no tests here), one job per module.

* :mod:`testkit.ports` -- HOST, a free port, a refused port.
* :mod:`testkit.protocol` -- policy requests, service specs, a policy client.
* :mod:`testkit.backends` -- the fake policy backend: FakeBackend, its modes changed at will.
* :mod:`testkit.stubs` -- stub backends: RawBackend, ScriptedBackend, OnceThenDead; Blackhole.
* :mod:`testkit.syslog` -- the syslog receiver (lines with their arrival times).
* :mod:`testkit.repo` -- the repository and the command line of its hapolicy.
* :mod:`testkit.daemon` -- the daemon runner (`hapolicy --listen`).
* :mod:`testkit.spawn` -- the spawned-process runner (spawn mode, one socket as fds 0-2).
* :mod:`testkit.load` -- many persistent connections with checked answers.
* :mod:`testkit.processes` -- processes seen through /proc.
* :mod:`testkit.wait` -- polling until a condition holds.
* :mod:`testkit.packages` -- Debian packages: present, or fail in CI and skip elsewhere.
* :mod:`testkit.postfix` -- real Postfix and postfwd2 instances.
* :mod:`testkit.smtpload` -- SMTP client threads sending RCPTs to a Postfix, each one timed.
* :mod:`testkit.public` -- directories and package copies that postfix and nobody can read.
* :mod:`testkit.perl` -- the runner of the Perl original, /usr/sbin/hapolicy.
* :mod:`testkit.scripts` -- scripts/*.py run with a JSON report.
* :mod:`testkit.dispatching` -- an in-process dispatcher, its loop, client and log (Run...).
* :mod:`testkit.imports` -- hapolicy's import graph read from its sources, and a cycle finder.
* :mod:`testkit.fuzzing` -- Hypothesis strategies: what a client or a service may send.
* :mod:`testkit.logs` -- loggers for in-process tests that keep what they are given.
* :mod:`testkit.ctl` -- `hapolicyctl` as a subprocess, its csv by POOL/SERVICE, control traffic.
* :mod:`testkit.fakecontrol` -- a stand-in control socket: a fixed answer, or a slow drip.
* :mod:`testkit.install` -- a copy of the package changed on disk (an upgrade's new program).
* :mod:`testkit.overlay` -- a throwaway copy of this machine's root, for installing packages.
* :mod:`testkit.postgrey` -- a real postgrey with a database of its own.
* :mod:`testkit.prometheus` -- a real Prometheus scraping one target, and its rules.
* :mod:`testkit.browser` -- Debian's Chromium, headless: a page's DOM, a screenshot's colours.

Tests import it as ``testkit`` (pyproject.toml gives pytest `pythonpath = ["scripts"]`); the
scripts import it as they import any module beside them (scripts/ is a script's sys.path[0]).
"""
