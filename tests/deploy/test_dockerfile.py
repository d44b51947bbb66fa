"""The Dockerfile's invariants, checked without a Docker engine, and its install commands in a venv."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _deploy_support import ROOT, config_text, container, container_port, mount_path, pod_spec

from bridge.cli import build_parser
from bridge.config import HttpSettings, MetricsSettings, QueueSettings

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|clang|cc|make|cargo|rustc)\b")


@dataclass
class Stage:
    """One FROM ... stage: its name and instructions as (keyword, argument text)."""

    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name or self.base} has no {keyword}"
        return found[-1]


def parse_dockerfile(text: str) -> list[Stage]:
    """Instructions grouped by stage; continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            # ARGs declared before the first FROM are what FROM lines may use.
            parts = re.sub(r"\$\{(\w+)\}", lambda m: global_args.get(m.group(1), m.group(0)), args).split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name.strip()] = default.strip()
        else:
            assert stages, f"{keyword} before FROM"
            stages[-1].instructions.append((keyword, " ".join(args.split())))
    return stages


STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]
BUILD = STAGES[0]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def test_parser_reads_continuations_and_stages() -> None:
    stages = parse_dockerfile("ARG X=img:1\nFROM ${X} AS b\nRUN one \\\n  # note\n  two\nFROM c\nUSER 5\n")
    assert [(s.base, s.name) for s in stages] == [("img:1", "b"), ("c", None)]
    assert stages[0].instructions == [("RUN", "one two")]
    assert stages[1].last("USER") == "5"


def test_multi_stage_without_compilers_in_the_final_image() -> None:
    assert len(STAGES) >= 2
    assert BUILD.name == "build"
    assert any("pip wheel" in run for run in BUILD.all("RUN")), "the first stage builds the wheels"
    for run in FINAL.all("RUN"):
        command = re.sub(r"--mount=\S+", "", run)
        assert not COMPILERS.search(command), f"final stage installs a compiler: {run}"
    install = next(run for run in FINAL.all("RUN") if "pip install" in run)
    assert "from=build" in install and "--no-index" in install, "the final stage installs only the built wheels"
    assert not FINAL.all("COPY"), "nothing but the wheels (bind-mounted) comes into the final image"
    assert FINAL.base == BUILD.base, "wheels are built for the same Python as the one they run on"
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", BUILD.base), f"{BUILD.base}: a slim Python 3.11 image"


def test_runs_as_a_numeric_non_root_user_the_chart_expects() -> None:
    user = FINAL.last("USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user} must be numeric for runAsNonRoot"
    uid, _, gid = user.partition(":")
    assert int(uid) != 0 and (not gid or int(gid) != 0)
    pod = pod_spec("default")["securityContext"]
    assert pod["runAsUser"] == int(uid)
    if gid:
        assert pod["runAsGroup"] == int(gid) and pod["fsGroup"] == int(gid)


def test_entrypoint_is_cortex_bridge_run() -> None:
    entrypoint = exec_form(FINAL.last("ENTRYPOINT"))
    cmd = exec_form(FINAL.last("CMD"))
    assert entrypoint == ["cortex-bridge"]
    assert cmd == ["run"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["cortex-bridge"] == "bridge.cli:main"
    assert build_parser().parse_args(cmd).command == "run"
    assert FINAL.last("STOPSIGNAL") == "SIGTERM"
    # The chart relies on the image's entrypoint and command.
    assert "command" not in container("default") and "args" not in container("default")


def test_exposed_ports_are_the_default_listen_ports() -> None:
    exposed = {int(p.split("/")[0]) for args in FINAL.all("EXPOSE") for p in args.split()}
    http, metrics = HttpSettings(), MetricsSettings()
    assert exposed == {http.port, metrics.port}
    assert container_port("default", "http") == http.port
    assert container_port("default", "metrics") == metrics.port


def test_volume_is_the_queue_directory() -> None:
    volumes = [v for args in FINAL.all("VOLUME") for v in exec_form(args)]
    queue_dir = str(QueueSettings().path.parent)
    assert volumes == [queue_dir]
    assert mount_path("default", "queue") == queue_dir
    assert f"path: {QueueSettings().path}" in config_text("default")
    assert any(queue_dir in run and "chown" in run for run in FINAL.all("RUN")), "the non-root user owns the volume"


def test_read_only_root_filesystem_settings() -> None:
    env = " ".join(FINAL.all("ENV"))
    assert "TMPDIR=/tmp" in env, "temporary files go to the /tmp emptyDir"
    assert "PYTHONDONTWRITEBYTECODE=1" in env, "no .pyc writes into a read-only site-packages"
    chart_env = {e["name"]: e.get("value") for e in container("default")["env"]}
    assert chart_env["TMPDIR"] == "/tmp" and mount_path("default", "tmp") == "/tmp"


def _dockerignore_regexes() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i:end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negate, re.compile(regex + "$")))
    return rules


def in_build_context(path: str) -> bool:
    """Whether Docker sends ``path`` (relative to the repo) with the build context."""
    excluded = False
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for negate, regex in _dockerignore_regexes():
        if any(regex.match(p) for p in prefixes):
            excluded = not negate
    return not excluded


def copied_sources() -> list[str]:
    sources = []
    for args in BUILD.all("COPY"):
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        sources.extend(parts[:-1])
    return sources


def test_dockerignore_keeps_what_the_build_copies() -> None:
    sources = copied_sources()
    assert set(sources) >= {"pyproject.toml", "bridge"}
    for source in sources:
        assert in_build_context(source), f".dockerignore excludes {source}, which the Dockerfile copies"
    assert in_build_context("bridge/cortex/simulator/example.yaml")
    for kept_out in (".git/config", "tests/deploy/test_drain.py", "bridge/__pycache__/app.cpython-311.pyc",
                     "queue.db", ".venv/bin/python"):
        assert not in_build_context(kept_out), kept_out


def _command(run: str, tool: str) -> list[str]:
    tokens = [t for t in shlex.split(run) if not t.startswith("--mount=")]
    start = tokens.index("pip")
    assert tokens[start + 1] == tool
    return tokens[start + 2:]


def offline_build_backend() -> bool:
    """Whether pyproject.toml's build backend can run without downloading it (--no-build-isolation)."""
    from importlib import metadata

    def version(name: str) -> tuple[int, ...] | None:
        try:
            return tuple(int(p) for p in metadata.version(name).split(".")[:2] if p.isdigit())
        except metadata.PackageNotFoundError:
            return None

    setuptools = version("setuptools")
    return setuptools is not None and (setuptools >= (70, 1) or (setuptools >= (68,) and version("wheel") is not None))


def see_installed_dependencies(venv: Path) -> None:
    """Let ``venv`` import this interpreter's installed dependencies, but not its own ``bridge``.

    ``--system-site-packages`` would show pip the (editable) cortex-bridge already installed, so
    the wheel would not be installed at all, and the editable import finder would shadow it.
    Instead the venv sees a mirror of the system site-packages without cortex-bridge and without
    ``.pth`` files (directories listed in a ``.pth`` file are appended to ``sys.path``; their
    own ``.pth`` files are not run).
    """
    import site

    mirror = venv / "system-site-packages"
    mirror.mkdir()
    for site_dir in (Path(p) for p in site.getsitepackages() if Path(p).is_dir()):
        for entry in site_dir.iterdir():
            name = entry.name.lower()
            if name.endswith(".pth") or "cortex_bridge" in name or name == "bridge":
                continue
            if not (mirror / entry.name).exists():
                (mirror / entry.name).symlink_to(entry)
    venv_site = next(venv.glob("lib/python*/site-packages"))
    (venv_site / "system_site_packages.pth").write_text(f"{mirror}\n")


@pytest.mark.timeout(240)
def test_the_dockerfile_install_works_in_a_fresh_virtualenv(tmp_path: Path) -> None:
    """Build the wheel from exactly what the Dockerfile copies, install it as the final stage does.

    Offline: the wheel is built with --no-deps --no-build-isolation (the image build downloads
    dependencies; here the venv sees this interpreter's, see see_installed_dependencies), then the final stage's
    own `pip install --no-index --find-links=/wheels cortex-bridge` runs with /wheels pointing here.
    """
    assert offline_build_backend(), (
        "building the wheel offline needs setuptools>=70.1 (or setuptools>=68 with wheel) installed "
        "next to pytest: add it to the test dependencies"
    )
    wheel_args = _command(next(r for r in BUILD.all("RUN") if "pip wheel" in r), "wheel")
    install_args = _command(next(r for r in FINAL.all("RUN") if "pip install" in r), "install")
    assert wheel_args == ["--wheel-dir", "/wheels", "."]
    assert "--no-index" in install_args and "--find-links=/wheels" in install_args

    src = tmp_path / "src"
    src.mkdir()
    for source in copied_sources():
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, src / source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(origin, src / source)
    wheels = tmp_path / "wheels"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         *[str(wheels) if a == "/wheels" else a for a in wheel_args]],
        cwd=src, env=env, capture_output=True, text=True, timeout=180,
    )
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    assert [p.name for p in wheels.glob("cortex_bridge-*.whl")], "no wheel built"

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    see_installed_dependencies(venv)
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", *[a.replace("/wheels", str(wheels)) for a in install_args]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180,
    )
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(args), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    where = run(str(venv / "bin" / "python"), "-c",
                "import bridge, pathlib; print(pathlib.Path(bridge.__file__).parent)")
    package_dir = Path(where.stdout.strip())
    assert package_dir.is_relative_to(venv), f"imported {package_dir}, not the installed wheel"
    assert (package_dir / "cortex" / "simulator" / "example.yaml").exists(), "package data missing from the wheel"
    helped = run(str(venv / "bin" / "cortex-bridge"), "--help")
    assert helped.returncode == 0 and "run" in helped.stdout
    config = tmp_path / "config.yaml"
    config.write_text(config_text("default"))
    checked = run(str(venv / "bin" / "cortex-bridge"), "--config", str(config), "check-config")
    assert checked.returncode == 0, checked.stderr
    assert json.loads(checked.stdout)["queue"]["path"] == str(QueueSettings().path)
