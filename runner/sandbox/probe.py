"""What this host lets the sandbox do, found once at start-up (``runner doctor`` prints it).

Each layer of DESIGN §7 is tried for real (bubblewrap runs ``true`` the way a job would run,
a cgroup is created and removed, the seccomp filter is compiled), so a report of ``active``
means jobs get it, and ``unavailable`` comes with the reason.  The worker logs the report and
refuses to start when a layer named in ``[sandbox] require`` is not active.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.sandbox import cgroup, seccomp
from runner.errors import ConfigError

log = logging.getLogger(__name__)
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
NOBODY_SLOT = 65533  # an uid the bwrap probe drops to; nothing runs as it afterwards
LAYERS = (
    "session", "rlimits", "pdeathsig", "environment", "uid", "bwrap", "network",
    "seccomp", "cgroup", "landlock", "subreaper", "nondumpable",
)
_CAP_SETUID, _CAP_SETGID = 7, 6
_SYS_LANDLOCK_CREATE_RULESET = 444


@dataclass(frozen=True)
class Layer:
    """One sandbox layer on this host."""

    name: str
    active: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "active": self.active, "detail": self.detail}


@dataclass(frozen=True)
class HostReport:
    """Every layer, plus the facts the sandbox builds its exec chain from."""

    layers: dict[str, Layer]
    root: bool
    tools: dict[str, str] = field(default_factory=dict)
    bwrap_mode: str = ""  # "root" (privileged, uid dropped inside) or "userns"
    bwrap_disable_userns: bool = False
    cgroups: cgroup.CgroupHost = field(default_factory=cgroup.CgroupHost)
    unshare_net: list[str] = field(default_factory=list)  # argv prefix when bwrap is missing
    landlock_abi: int = 0

    def active(self, name: str) -> bool:
        return self.layers[name].active

    def to_json(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "layers": [layer.to_json() for layer in self.layers.values()],
            "active": [n for n, layer in self.layers.items() if layer.active],
        }


def check_required(report: HostReport, required: list[str] | tuple[str, ...]) -> list[str]:
    """Names in ``required`` that are not active here (unknown names are a ConfigError)."""
    unknown = sorted(set(required) - set(LAYERS))
    if unknown:
        raise ConfigError(
            f"[sandbox] require: unknown layer {unknown[0]!r}; known: {', '.join(LAYERS)}"
        )
    return [name for name in required if not report.active(name)]


def _tool(name: str) -> str | None:
    return shutil.which(name, path=SAFE_PATH) or shutil.which(name)


def _caps() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def _run(argv: list[str]) -> tuple[bool, str]:
    try:
        proc = subprocess.run(  # noqa: S603 - fixed argv
            argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
            env={"PATH": SAFE_PATH},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    err = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
    return proc.returncode == 0, err


def _landlock_abi() -> int:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return 0
    return max(0, int(abi))


def _bwrap(tools: dict[str, str], root: bool) -> tuple[str, bool, str]:
    """(mode, supports --disable-userns, detail or error)."""
    from runner.sandbox.bwrap import NAMESPACES, ROOT_CAPS, SYSTEM_BINDS  # the view a job gets

    bwrap = tools.get("bwrap")
    if not bwrap:
        return "", False, "bwrap is not installed (Debian: bubblewrap)"
    base = [bwrap, *NAMESPACES, "--unshare-net", "--die-with-parent", "--new-session", *SYSTEM_BINDS,
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    if root:
        setpriv = tools.get("setpriv", "/usr/bin/setpriv")
        argv = [*base, *ROOT_CAPS, "--", setpriv, f"--reuid={NOBODY_SLOT}", f"--regid={NOBODY_SLOT}",
                "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
                "--", "true"]
        ok, err = _run(argv)
        return ("root", False, "privileged bwrap, uid dropped inside") if ok else ("", False, err)
    ok, err = _run([*base, "--unshare-user", "--disable-userns", "--", "true"])
    if ok:
        return "userns", True, "unprivileged bwrap in a user namespace"
    ok, err = _run([*base, "--unshare-user", "--", "true"])
    return ("userns", False, "unprivileged bwrap (no --disable-userns)") if ok else ("", False, err)


@functools.lru_cache(maxsize=1)
def probe() -> HostReport:
    """Probe the host once per process (about 30 ms)."""
    tools = {n: p for n in ("prlimit", "setpriv", "bwrap", "unshare") if (p := _tool(n))}
    caps = _caps()
    root = os.geteuid() == 0 and bool(caps & (1 << _CAP_SETUID)) and bool(caps & (1 << _CAP_SETGID))
    layers: dict[str, Layer] = {}

    def put(name: str, active: bool, detail: str) -> None:
        layers[name] = Layer(name, active, detail)

    put("session", True, "own session and process group; the tree is killed at the end")
    put("rlimits", "prlimit" in tools,
        "prlimit: core 0, cpu, file size, open files (+nproc per slot uid, +address space without cgroup)"
        if "prlimit" in tools else "prlimit (util-linux) not found")
    put("pdeathsig", "setpriv" in tools or "bwrap" in tools,
        "killed when the worker dies (setpriv --pdeathsig / bwrap --die-with-parent)"
        if "setpriv" in tools or "bwrap" in tools else "neither setpriv nor bwrap found")
    put("environment", True, "scrubbed: PATH, HOME, TMPDIR, LANG and allowed names only")
    if root and "setpriv" in tools:
        put("uid", True, "per-slot unprivileged uid (worker is root)")
    else:
        put("uid", False, f"worker is not root: jobs run as the worker's uid {os.geteuid()}"
            if not root else "setpriv (util-linux) not found")

    mode, disable_userns, detail = _bwrap(tools, root)
    put("bwrap", bool(mode), detail)
    unshare_net: list[str] = []
    if "unshare" in tools:  # the network fallback when bwrap is missing or disabled
        argv = [tools["unshare"], "--net"] if root else [tools["unshare"], "--user", "--map-root-user", "--net"]
        ok, err = _run([*argv, "true"])
        unshare_net = argv if ok else []
    if mode:
        put("network", True, "private network namespace unless the job type allows network (bwrap)")
    elif unshare_net:
        put("network", True, f"private network namespace ({' '.join(unshare_net[1:])})")
    else:
        put("network", False, "neither bwrap nor unshare works: jobs share the host network")
    try:
        seccomp.compile_filter(False)
        seccomp_ok, seccomp_detail = bool(mode), (
            f"deny-list of {len(seccomp.DENIED) + 3} syscalls, non-unix sockets when offline (bwrap --seccomp)"
            if mode else "libseccomp works, but the filter is applied through bwrap, which is unavailable")
    except seccomp.SeccompUnavailable as exc:
        seccomp_ok, seccomp_detail = False, str(exc)
    put("seccomp", seccomp_ok, seccomp_detail)

    cg_host, cg_detail = cgroup.detect()
    put("cgroup", cg_host.limits, cg_detail if cg_host.limits else f"no memory/pids limits: {cg_detail}")
    if cg_host.roots():
        cgroup.remove_stale(cg_host)

    abi = _landlock_abi()
    put("landlock", abi > 0, f"Landlock ABI {abi}: confines the file system (and TCP from ABI 4) "
        "where bwrap is not used" if abi else "not supported by this kernel")
    put("subreaper", True, "the worker adopts and reaps orphaned job processes")
    put("nondumpable", True, "the worker's memory and /proc/<pid>/environ are closed to same-uid jobs")
    return HostReport(
        layers=layers, root=root, tools=tools, bwrap_mode=mode,
        bwrap_disable_userns=disable_userns, cgroups=cg_host, unshare_net=unshare_net,
        landlock_abi=abi,
    )


def summary(report: HostReport) -> str:
    """One log line: active layers, then unavailable ones."""
    on = [n for n, layer in report.layers.items() if layer.active]
    off = [n for n, layer in report.layers.items() if not layer.active]
    return f"sandbox layers active: {', '.join(on)}; unavailable: {', '.join(off) or 'none'}"
