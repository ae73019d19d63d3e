"""The external programs the benchmarks drive: nginx and wrk, installed when missing.

`ensure_tools` finds ``nginx`` and ``wrk`` on ``PATH`` (nginx also in ``/usr/sbin``, which
is not on every user's ``PATH``). When one is missing and we run as root on a Debian-like
system, it runs ``apt-get update`` once and installs them without questions, with a
``policy-rc.d`` in place so the package does not start the system nginx service; our
nginx instances always run with their own config, prefix and ports. Otherwise it says what
to install and the caller exits with status 2.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Debian packages: nginx (the server), its stream module (the L4 row) and wrk.
APT_PACKAGES = ("nginx", "libnginx-mod-stream", "wrk")

_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
_STREAM_MODULE_DIRS = (
    "/usr/lib/nginx/modules",
    "/usr/lib64/nginx/modules",
    "/usr/share/nginx/modules",
)


class MissingTools(Exception):
    """Raised when a required program is absent and cannot be installed from here."""


@dataclass(frozen=True)
class Tools:
    """Paths of the programs, and how this nginx gets its ``stream`` module."""

    nginx: str
    wrk: str
    nginx_version: str
    wrk_version: str
    #: ``""`` when stream is built in, a ``load_module`` path when it is dynamic, ``None``
    #: when this nginx has no stream module at all (the L4 row is then skipped).
    stream_module: str | None


def _which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for directory in _SBIN_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _apt_install(packages: tuple[str, ...]) -> None:
    """``apt-get update`` then ``apt-get install -y``, services kept from starting."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # invoke-rc.d asks policy-rc.d whether it may start a service; 101 means "no".
    created_policy = False
    if not _POLICY_RC_D.exists():
        _POLICY_RC_D.write_text(
            "#!/bin/sh\n# written by yurthub's bench during apt-get install\nexit 101\n"
        )
        _POLICY_RC_D.chmod(0o755)
        created_policy = True
    try:
        print(
            "bench: installing " + " ".join(packages) + " (apt-get update, then install)",
            flush=True,
        )
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
            env=env,
            check=True,
            timeout=900,
        )
    finally:
        if created_policy:
            _POLICY_RC_D.unlink(missing_ok=True)


def _version(argv: list[str], pattern: str) -> str:
    """The part of a program's version banner matching ``pattern`` (nginx -v prints it on
    stderr; wrk -v on stdout, exiting non-zero)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    match = re.search(pattern, done.stderr + done.stdout)
    return match.group(0) if match else "unknown"


def _stream_module(nginx: str) -> str | None:
    try:
        configure = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    except (OSError, subprocess.TimeoutExpired):
        return None
    if re.search(r"--with-stream(\s|$)", configure):
        return ""
    for directory in _STREAM_MODULE_DIRS:
        module = os.path.join(directory, "ngx_stream_module.so")
        if os.path.exists(module):
            return module
    return None


def ensure_tools(*, install: bool = True) -> Tools:
    """Find nginx and wrk, installing them with apt-get if allowed and possible.

    A missing ``stream`` module alone is not a reason to install: that row is skipped.
    Raises `MissingTools` with the command a user should run when they stay missing.
    """
    nginx, wrk = _which("nginx"), _which("wrk")
    stream = _stream_module(nginx) if nginx else None
    if nginx is None or wrk is None:
        can_apt = os.geteuid() == 0 and shutil.which("apt-get") is not None
        if install and can_apt:
            try:
                _apt_install(APT_PACKAGES)
            except (OSError, subprocess.SubprocessError) as e:
                raise MissingTools(
                    f"apt-get could not install {' '.join(APT_PACKAGES)}: {e}"
                ) from e
            nginx, wrk = _which("nginx"), _which("wrk")
            stream = _stream_module(nginx) if nginx else None
        if nginx is None or wrk is None:
            missing = [name for name, path in (("nginx", nginx), ("wrk", wrk)) if path is None]
            raise MissingTools(
                f"missing: {', '.join(missing)}; install them, e.g. "
                f"`sudo apt-get install -y {' '.join(APT_PACKAGES)}`"
            )
    return Tools(
        nginx=nginx,
        wrk=wrk,
        nginx_version=_version([nginx, "-v"], r"nginx/\S+"),
        wrk_version=_version([wrk, "-v"], r"wrk \S+"),
        stream_module=stream,
    )
