"""The deploy pages agree with the modules they apply: every `terraform output NAME` that a cloud's page,
docs/hardening.md or an overlay tells a user to read is an output of the example root module the page
applies from (a missing one stops the steps at `Output "NAME" not found`), each example output is one
its module has, and every `-target` names a resource of the module."""

from __future__ import annotations

import re

import hcl2
import pytest

from conftest import REPO

CLOUDS = {"aws": "AWS", "gcp": "GCP", "azure": "Azure"}  # the tag of a cloud's line in docs/hardening.md
_OUTPUT = re.compile(r"terraform (?:-chdir=\S+ )?output (?:-raw )?([a-z0-9_]+)")
_CHDIR = re.compile(r"terraform -chdir=(\S+)")
_TARGET = re.compile(r"-target=module\.kubesonar\.([a-z0-9_]+)\.([a-z0-9_]+)")


def _outputs(path) -> dict[str, str]:
    with open(path) as f:
        return {name.strip('"'): str(body["value"]).strip('"')
                for block in hcl2.load(f).get("output", []) for name, body in block.items()}


def _pages(cloud: str) -> str:
    """What tells a user of ``cloud`` what to run: its page, its lines of hardening.md, its overlay."""
    hardening = [line for line in (REPO / "docs" / "hardening.md").read_text().splitlines()
                 if line.rstrip().endswith(f"# {CLOUDS[cloud]}")]
    overlay = [p.read_text() for p in sorted((REPO / "infra" / "k8s" / "overlays" / cloud).glob("*.yaml"))]
    return "\n".join([(REPO / "docs" / f"{cloud}.md").read_text(), *hardening, *overlay])


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_output_the_steps_read_is_one_the_example_has(cloud):
    told = set(_OUTPUT.findall(_pages(cloud)))
    assert told, cloud
    missing = told - set(_outputs(REPO / "infra" / cloud / "examples" / "minimal" / "main.tf"))
    assert not missing, f"infra/{cloud}/examples/minimal has no output {sorted(missing)}"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_steps_run_from_the_repository_root_in_the_clouds_example(cloud):
    page = (REPO / "docs" / f"{cloud}.md").read_text()
    assert "cd infra" not in page  # a later step's infra/k8s/... or build/... path would then miss
    assert set(_CHDIR.findall(page)) == {f"infra/{cloud}/examples/minimal"}


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_example_output_is_the_modules(cloud):
    module = set(_outputs(REPO / "infra" / cloud / "outputs.tf"))
    for name, value in _outputs(REPO / "infra" / cloud / "examples" / "minimal" / "main.tf").items():
        assert value.removeprefix("${module.kubesonar.").removesuffix("}") in module, name


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_target_is_a_resource_of_the_module(cloud):
    with open(REPO / "infra" / cloud / "main.tf") as f:
        resources = {(t.strip('"'), n.strip('"')) for block in hcl2.load(f)["resource"]
                     for t, named in block.items() for n in named}
    for target in _TARGET.findall(_pages(cloud)):
        assert target in resources, target
