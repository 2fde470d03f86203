"""The Dockerfile and .dockerignore, without a Docker engine (none runs here).

Static checks read the Dockerfile's instructions (multi-stage, dependency layer before
the source, non-root user, HEALTHCHECK, no ENTRYPOINT) and compare its install steps
with the Makefile's. Then the image's build is replayed in a fresh virtual environment:
the build context is cut by .dockerignore, the package is installed with the
Dockerfile's own `pip install --no-deps .`, and the image's commands run from that venv:
`uba-api` (the default CMD, with the image's ENV) answers, the HEALTHCHECK command
passes against it, and `uba-batch` (the override role) runs.

Trade-off: the fresh venv gets the third-party dependencies from the project venv (a
.pth line) instead of downloading them again (ray, polars, scikit-learn... are about a
gigabyte); the project itself is built and installed for real, non-editable, from the
context the image would get, and the test checks that it is that copy that runs.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import httpx
import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
PROJECT_VENV_BIN = Path(sys.executable).parent
# uba.model.kernel's loops that numba caches (one .nbi index each): the complete and node
# forest kernels, the scaler, the search for twin rows and the reason ranking of shards
COMPILED_LOOPS = ("_complete_kernel", "_node_loop", "_scale_kernel", "_distinct_loop", "_rank_loop")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    instructions: list[Instruction] = []
    pending = ""
    stage = -1
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def _split_commands(run: str) -> list[str]:
    return [part.strip() for part in run.split("&&") if part.strip()]


def _pip_installs(commands: list[str]) -> list[list[str]]:
    """The argument lists after `pip install` in shell commands (any pip path)."""
    found = []
    for command in commands:
        words = shlex.split(command)
        for i, word in enumerate(words[:-1]):
            if word.endswith("pip") and words[i + 1] == "install":
                found.append(words[i + 2:])
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[Instruction]:
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def _args(instructions: list[Instruction]) -> dict[str, str]:
    return {k: v for k, _, v in (i.args.partition("=") for i in instructions if i.keyword == "ARG")}


def _image_env(instructions: list[Instruction], stage: int) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV" and instruction.stage == stage:
            for pair in shlex.split(instruction.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def _exec_form(args: str) -> list[str]:
    import json

    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def _makefile_recipe(target: str) -> list[str]:
    """The recipe lines of one Makefile target, with the Makefile's $(UV) and $(PINNED)
    spelled out."""
    lines = (REPO / "Makefile").read_text().splitlines()
    uv, pinned = (next(line.split(":=", 1)[1].strip() for line in lines if line.startswith(f"{name} :="))
                  for name in ("UV", "PINNED"))
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip().replace("$(UV)", uv).replace("$(PINNED)", pinned))
    return recipe


# ----------------------------------------------------------------- static checks


def test_multi_stage_on_slim_python_matching_the_project(dockerfile: list[Instruction]) -> None:
    froms = [i for i in dockerfile if i.keyword == "FROM"]
    assert len(froms) >= 2
    args = _args(dockerfile)
    images = [re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.args.split()[0]) for f in froms]
    for image in images:
        match = re.fullmatch(r"python:(\d+\.\d+)-slim(-\w+)?", image)
        assert match, image
        requires = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"])
        assert f"{match.group(1)}.0" in requires
    final = froms[-1].stage
    copies_from_build = [i for i in dockerfile if i.stage == final and i.keyword == "COPY" and "--from=" in i.args]
    assert any("/opt/venv" in i.args for i in copies_from_build)
    # The final stage installs nothing: no pip, no compilers, no package manager.
    final_runs = " ".join(i.args for i in dockerfile if i.stage == final and i.keyword == "RUN")
    assert not re.search(r"\b(pip|apt-get|apk|gcc|build-essential)\b", final_runs), final_runs


def test_dependencies_are_a_layer_before_the_source(dockerfile: list[Instruction]) -> None:
    build = [i for i in dockerfile if i.stage == 0]
    keys = [(i.keyword, i.args) for i in build]
    pyproject_copy = keys.index(("COPY", "pyproject.toml constraints.txt ./"))
    source_copies = [n for n, (k, a) in enumerate(keys) if k == "COPY" and re.match(r"(uba|jobs)\b", a)]
    dep_install = next(n for n, (k, a) in enumerate(keys) if k == "RUN" and "requirements" in a)
    assert pyproject_copy < dep_install < min(source_copies)
    assert all(k != "COPY" or a.startswith(("pyproject.toml", "README.md", "uba", "jobs")) for k, a in keys)


def _pins(text: str) -> dict[str, list[Requirement]]:
    """constraints.txt's pins by package name (a package may have one per Python range)."""
    pins: dict[str, list[Requirement]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            pin = Requirement(line)
            pins.setdefault(canonicalize_name(pin.name), []).append(pin)
    return pins


def test_every_installed_package_is_pinned_at_the_version_installed() -> None:
    """A dependency added to pyproject.toml without `make lock` would be installed at
    whatever its newest release is on the day, the drift constraints.txt exists to stop;
    and a pin the project venv does not hold means the suite did not run on the pins."""
    pins = _pins((REPO / "constraints.txt").read_text())
    # the venv's own packages: once Ray is imported, sys.path also holds the copies Ray
    # vendors (ray/thirdparty_files: psutil, colorama), which no install put there
    site_packages = {sysconfig.get_paths()[key] for key in ("purelib", "platlib")}
    for dist in metadata.distributions(path=sorted(site_packages)):
        name = canonicalize_name(dist.metadata["Name"])
        if name in {"uba", "pip", "setuptools", "uv"}:
            continue
        assert name in pins, f"{name} is installed but not pinned in constraints.txt: run `make lock`"
        (pin,) = [p for p in pins[name] if p.marker is None or p.marker.evaluate()]
        assert pin.specifier.contains(dist.version, prereleases=True), (name, dist.version, str(pin))
    for name in ("polars", "ray", "scikit-learn", "numba", "fastapi"):
        assert name in pins

def test_install_steps_are_the_makefiles(dockerfile: list[Instruction]) -> None:
    """Same pyproject, same pinned versions: the Makefile's `make install` (uv, `-e .`,
    byte-compiled as pip does by default) and `make install-dev` (`-e ".[dev]"`), both
    constrained by constraints.txt, become, in the image, the pyproject's dependencies under
    the same constraints and then a regular install of "." (no editable mode, no dev
    extras) after a pip upgrade."""
    runtime = _pip_installs(_makefile_recipe("$(RUNTIME_STAMP)"))
    dev = _pip_installs(_makefile_recipe("$(DEV_STAMP)"))
    assert runtime == [["--compile-bytecode", "--python", "$(BIN)/python", "-c", "constraints.txt", "-e", "."]]
    assert dev == [["--compile-bytecode", "--python", "$(BIN)/python", "-c", "constraints.txt", "-e", ".[dev]"]]
    runs = [c for i in dockerfile if i.stage == 0 and i.keyword == "RUN" for c in _split_commands(i.args)]
    docker = _pip_installs(runs)
    assert docker[0] == ["--upgrade", "pip"]
    assert docker[1] == ["-c", "constraints.txt", "-r", "/tmp/requirements.txt"]
    assert docker[-1] == ["--no-deps", "."]  # the project, from "."


def test_dependency_layer_installs_exactly_pyprojects_dependencies(
        dockerfile: list[Instruction], tmp_path: Path) -> None:
    """Run the Dockerfile's own requirements one-liner on the repo's pyproject.toml."""
    run = next(i.args for i in dockerfile if i.stage == 0 and i.keyword == "RUN" and "tomllib" in i.args)
    (one_liner,) = [c for c in _split_commands(run) if "tomllib" in c]
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    command = one_liner.replace("/tmp/requirements.txt", str(tmp_path / "requirements.txt"))
    subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=30,
                   env={**os.environ, "PATH": f"{PROJECT_VENV_BIN}:{os.environ['PATH']}"})
    listed = {Requirement(r).name for r in (tmp_path / "requirements.txt").read_text().split("\n") if r}
    installed = {Requirement(r).name for r in metadata.requires("uba") or [] if "extra ==" not in r}
    assert listed == installed and {"ray", "polars", "fastapi"} <= listed


def test_runs_as_non_root_with_both_roles_and_a_health_check(dockerfile: list[Instruction]) -> None:
    final = max(i.stage for i in dockerfile)
    stage = [i for i in dockerfile if i.stage == final]
    users = [i for i in stage if i.keyword == "USER"]
    assert users, "no USER in the final stage"
    uid = re.sub(r"\$\{(\w+)\}", lambda m: _args(dockerfile)[m.group(1)], users[-1].args).split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000  # numeric, so Kubernetes can verify runAsNonRoot
    last_user = max(n for n, i in enumerate(stage) if i.keyword == "USER")
    assert all(i.keyword not in ("RUN", "USER") for i in stage[last_user + 1:])
    assert not [i for i in dockerfile if i.keyword == "ENTRYPOINT"]  # CMD alone: `docker run IMAGE uba-batch ...`
    (cmd,) = [i for i in stage if i.keyword == "CMD"]
    assert _exec_form(cmd.args) == ["uba-api"]
    (health,) = [i for i in stage if i.keyword == "HEALTHCHECK"]
    assert "CMD [" in health.args and "/health" in health.args
    env = _image_env(dockerfile, final)
    assert env["RAY_USAGE_STATS_ENABLED"] == "0"
    assert env["UBA_API__HOST"] == "0.0.0.0" and env["PATH"].startswith("/opt/venv/bin:")


def _numba_cache_setup(dockerfile: list[Instruction]) -> tuple[str, list[Instruction], Instruction]:
    """The final stage's NUMBA_CACHE_DIR, its instructions, and the RUN that warms the cache."""
    final = max(i.stage for i in dockerfile)
    stage = [i for i in dockerfile if i.stage == final]
    warm = [i for i in stage if i.keyword == "RUN" and "warm_up()" in i.args]
    assert len(warm) == 1, "no (or several) RUN warming numba's cache in the final stage"
    return _image_env(dockerfile, final)["NUMBA_CACHE_DIR"], stage, warm[0]


def test_numba_cache_is_warmed_at_build_and_owned_by_the_image_user(dockerfile: list[Instruction]) -> None:
    """numba only uses a cache directory it can write to: the image's user must own it."""
    cache_dir, stage, warm = _numba_cache_setup(dockerfile)
    position = {id(i): n for n, i in enumerate(stage)}
    env_at = next(n for n, i in enumerate(stage) if i.keyword == "ENV" and "NUMBA_CACHE_DIR=" in i.args)
    copy_venv_at = next(n for n, i in enumerate(stage) if i.keyword == "COPY" and "/opt/venv" in i.args)
    last_user = max(n for n, i in enumerate(stage) if i.keyword == "USER")
    assert max(env_at, copy_venv_at) < position[id(warm)] < last_user
    commands = _split_commands(warm.args)
    chown = [shlex.split(c) for c in commands if c.startswith("chown")]
    assert chown and chown[-1][:3] == ["chown", "-R", "${UBA_UID}:${UBA_UID}"]
    assert PurePosixPath(cache_dir).is_relative_to(chown[-1][3])
    assert not PurePosixPath(cache_dir).is_relative_to("/tmp")  # a pod's /tmp emptyDir would hide it
    assert [c for c in commands if "uba.model.kernel" in c]


# ----------------------------------------------------------------- .dockerignore


def _ignore_patterns() -> list[tuple[bool, str]]:
    patterns = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            patterns.append((negate, line.lstrip("!").strip("/")))
    return patterns


def _pattern_matches(pattern: str, path: str) -> bool:
    """Docker's rule: a pattern matching a directory excludes everything under it."""
    parts = path.split("/")
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    if pattern.startswith("**/"):
        tail = pattern[3:]
        return any(fnmatch.fnmatchcase(part, tail) for part in parts) or \
            any(fnmatch.fnmatchcase(c, pattern) for c in candidates)
    return any(fnmatch.fnmatchcase(c, pattern) and c.count("/") == pattern.count("/") for c in candidates)


def is_ignored(path: str) -> bool:
    ignored = False
    for negate, pattern in _ignore_patterns():
        if _pattern_matches(pattern, path):
            ignored = not negate
    return ignored


def build_context(dest: Path) -> list[str]:
    """Copy the repository as `docker build .` would send it, honouring .dockerignore."""
    sent = []
    for directory, subdirs, files in os.walk(REPO):
        base = Path(directory).relative_to(REPO).as_posix()
        prefix = "" if base == "." else base + "/"
        subdirs[:] = [d for d in subdirs if not is_ignored(prefix + d)]  # never walk .venv, .git
        for name in files:
            relative = prefix + name
            if not is_ignored(relative):
                (dest / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / relative, dest / relative)
                sent.append(relative)
    return sorted(sent)


@pytest.mark.parametrize("path", [
    "data/events/event_date=2026-03-01/part-0.parquet", "models/LATEST", "models/v1/forest.npz",
    "output/scores/event_date=2026-03-22/part-0.parquet", ".venv/bin/python", ".git/HEAD",
    "uba/__pycache__/io.cpython-311.pyc", ".pytest_cache/README.md", "certs/uba.key", "demo/data/x",
    "tests/test_cli.py", "uba.egg-info/PKG-INFO", ".env",
])
def test_dockerignore_keeps_out(path: str) -> None:
    assert is_ignored(path)


@pytest.mark.parametrize("path", ["pyproject.toml", "README.md", "uba/io.py", "jobs/cli.py",
                                  "configs/default.yaml"])
def test_dockerignore_keeps_what_the_image_needs(path: str) -> None:
    assert not is_ignored(path)


def test_every_copy_source_is_in_the_build_context(dockerfile: list[Instruction]) -> None:
    for instruction in dockerfile:
        if instruction.keyword == "COPY" and "--from=" not in instruction.args:
            *sources, _ = instruction.args.split()
            for source in sources:
                assert (REPO / source).exists(), source
                assert not is_ignored(source), f"{source} is copied but .dockerignore excludes it"


# ----------------------------------------------------------------- the image's commands, for real


def _unused_port() -> int:
    """A port nobody listens on now (the server binds it itself; callers retry on a conflict)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _serves_health(server: subprocess.Popen[bytes], port: int, log: Path) -> bool:
    """Wait until /health answers 200 (True) or the server exits (False, e.g. a taken port)."""
    def settled() -> str | None:
        if server.poll() is not None:
            return "exited"
        try:
            return "serving" if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200 else None
        except httpx.HTTPError:
            return None

    return wait_until(settled, 60, f"uba-api on port {port} to serve /health (log {log})", interval=0.2) == "serving"


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fresh venv with the project installed from the .dockerignore'd context with the
    Dockerfile's `pip install --no-deps .`; returns (venv, WORKDIR with configs/)."""
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    sent = build_context(context)
    assert not [p for p in sent if p.startswith((".git/", ".venv/", "data/", "models/", "output/"))]
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    # The project's pip (same version as `make install` upgraded to), driving the fresh venv.
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install",
                             "--no-deps", "--no-input", "."],
                            cwd=context, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # Third-party dependencies only: appended after the venv's own site-packages.
    Path(purelib, "zz-project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    workdir = root / "app"  # WORKDIR /app + COPY configs ./configs
    shutil.copytree(context / "configs", workdir / "configs")
    return venv, workdir


def _image_process_env(dockerfile: list[Instruction], venv: Path, **overrides: str) -> dict[str, str]:
    """The final stage's ENV with /opt/venv mapped to the test venv, plus `docker run -e`."""
    env = _image_env(dockerfile, max(i.stage for i in dockerfile))
    env = {k: v.replace("$PATH", os.environ["PATH"]).replace("/opt/venv", str(venv)) for k, v in env.items()}
    return {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **overrides}


def test_the_installed_copy_is_the_one_that_runs(image_venv: tuple[Path, Path]) -> None:
    venv, workdir = image_venv
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import uba, jobs; print(uba.__file__, jobs.__file__)"],
                           capture_output=True, text=True, check=True, cwd=workdir).stdout.split()
    assert all(Path(w).is_relative_to(venv) for w in where), where  # not the editable checkout


def test_both_entry_commands_answer_help(image_venv: tuple[Path, Path], dockerfile: list[Instruction]) -> None:
    venv, workdir = image_venv
    env = _image_process_env(dockerfile, venv)
    for command, expected in (("uba-api", "Serve POST /predict"), ("uba-batch", "score")):
        result = subprocess.run([command, "--help"], capture_output=True, text=True, env=env, cwd=workdir, timeout=60)
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout
        assert shutil.which(command, path=env["PATH"]) == str(venv / "bin" / command)


def test_default_cmd_serves_and_the_healthcheck_passes(image_venv: tuple[Path, Path],
                                                       dockerfile: list[Instruction], tmp_path: Path) -> None:
    venv, workdir = image_venv
    final = max(i.stage for i in dockerfile)
    cmd = _exec_form(next(i.args for i in dockerfile if i.stage == final and i.keyword == "CMD"))
    health = next(i.args for i in dockerfile if i.stage == final and i.keyword == "HEALTHCHECK")
    check = _exec_form(health[health.index("CMD") + 3:].strip())
    # The HEALTHCHECK reads the port from UBA_API__PORT, so the server gets a fixed one (not 0):
    # one free a moment ago may be taken when uvicorn binds, so a start that fails is retried.
    for attempt in range(3):
        port = _unused_port()
        # As `docker run -e UBA_API__HOST=127.0.0.1 -e UBA_API__PORT=... -v ...:/var/lib/uba IMAGE`:
        # tests listen on loopback only.
        env = _image_process_env(dockerfile, venv, UBA_API__HOST="127.0.0.1", UBA_API__PORT=str(port),
                                 UBA_DATA_DIR=str(tmp_path / "data"), UBA_MODEL_DIR=str(tmp_path / "models"),
                                 UBA_OUTPUT_DIR=str(tmp_path / "output"), HOME=str(tmp_path),
                                 MPLCONFIGDIR=str(tmp_path / "mpl"))
        unhealthy = subprocess.run(check, env=env, cwd=workdir, capture_output=True, timeout=30)
        assert unhealthy.returncode != 0  # nothing listens yet: the check can fail
        log = tmp_path / f"api-{attempt}.log"
        with log.open("wb") as out:
            server = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        if _serves_health(server, port, log) or attempt == 2 or "address already in use" not in log.read_text():
            break
    try:
        assert server.poll() is None, log.read_text()
        healthy = subprocess.run(check, env=env, cwd=workdir, capture_output=True, text=True, timeout=30)
        assert healthy.returncode == 0, healthy.stderr + log.read_text()
        ready = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5)
        assert ready.status_code == 503  # no model on the empty volume yet, and it says so
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=15)


def test_batch_override_command_runs(image_venv: tuple[Path, Path], dockerfile: list[Instruction],
                                     tmp_path: Path) -> None:
    """`docker run IMAGE uba-batch generate ...`: the batch role, with the image's ENV."""
    venv, workdir = image_venv
    env = _image_process_env(dockerfile, venv, UBA_DATA_DIR=str(tmp_path / "data"), HOME=str(tmp_path))
    result = subprocess.run(
        ["uba-batch", "--log-format", "json", "generate", "--out", str(tmp_path / "data"), "--users", "5",
         "--days", "2", "--start", "2026-03-01", "--seed", "1"],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert list((tmp_path / "data" / "events").glob("event_date=2026-03-0[12]/*.parquet"))
    bad = subprocess.run(["uba-batch", "score", "--date", "2026-13-01"], env=env, cwd=workdir,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "2026-13-01" in bad.stderr


def test_the_build_time_warm_up_fills_the_cache_that_later_processes_load(
        image_venv: tuple[Path, Path], dockerfile: list[Instruction], tmp_path: Path) -> None:
    """The Dockerfile's own warm-up command, run against the installed copy: every compiled
    loop (COMPILED_LOOPS) lands in NUMBA_CACHE_DIR, and a new process loads them instead of
    compiling."""
    venv, workdir = image_venv
    _, _, warm = _numba_cache_setup(dockerfile)
    (command,) = [c for c in _split_commands(warm.args) if "uba.model.kernel" in c]
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = _image_process_env(dockerfile, venv, NUMBA_CACHE_DIR=str(cache), HOME=str(tmp_path))
    subprocess.run(command.replace("/opt/venv", str(venv)), shell=True, env=env, cwd=workdir,
                   check=True, timeout=300)
    cached = {index.name.split(".")[1].rsplit("-", 1)[0] for index in cache.rglob("kernel.*.nbi")}
    assert cached == set(COMPILED_LOOPS), cached
    again = subprocess.run([str(venv / "bin" / "python"), "-c", "import uba.model.kernel as k; k.warm_up()"],
                           env={**env, "NUMBA_DEBUG_CACHE": "1"}, cwd=workdir, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("[cache] data loaded") == len(COMPILED_LOOPS) and "data saved" not in again.stdout
