"""Support of hapolicy's tests and scripts (no tests here), one job per module.

* :mod:`support.ports` -- HOST, a free port, a refused port.
* :mod:`support.protocol` -- policy requests, service specs, a policy client.
* :mod:`support.backends` -- fake policy backends: FakeBackend, RawBackend, Blackhole.
* :mod:`support.syslog` -- the syslog receiver (lines with their arrival times).
* :mod:`support.repo` -- the repository and the command line of its hapolicy.
* :mod:`support.daemon` -- the daemon runner (`hapolicy --listen`).
* :mod:`support.spawn` -- the spawned-process runner (spawn mode, one socket as fds 0-2).
* :mod:`support.load` -- many persistent connections with checked answers.
* :mod:`support.processes` -- processes seen through /proc.
* :mod:`support.wait` -- polling until a condition holds.
* :mod:`support.packages` -- Debian packages: present, or fail in CI and skip elsewhere.
* :mod:`support.postfix` -- real Postfix and postfwd2 instances.
* :mod:`support.perl` -- the runner of the Perl original, /usr/sbin/hapolicy.
* :mod:`support.scripts` -- scripts/*.py run with a JSON report.
* :mod:`support.fuzzing` -- Hypothesis strategies: what a client or a service may send.

Tests import it as ``support`` (pytest puts tests/ on sys.path: tests/ has no __init__.py);
scripts put tests/ on sys.path themselves.
"""
