"""Repository files that nothing else exercises: the compose file and the CI entry point."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_file_is_valid_and_wired() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"index", "api", "index-gpu", "api-gpu"} <= services.keys()
    assert services["api"]["depends_on"]["index"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in services["api"] and "/v1/health" in " ".join(services["api"]["healthcheck"]["test"])
    assert services["index-gpu"]["profiles"] == ["gpu"]


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / "README.md").read_text()
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_the_package_metadata_builds_without_deprecation_warnings() -> None:
    """setuptools ≥ 77 warns on a ``license = {text = ...}`` table: the licence is an SPDX string."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])
    assert project["project"]["scripts"]["headwater"] == "headwater.entry:main"


def test_the_readme_cites_only_what_a_clone_has() -> None:
    """A clone has no ../shared: design and evaluation notes live in docs/, and every local link resolves."""
    import re

    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme
    links = re.findall(r"\]\(((?:docs|bench)/[^)#]+)\)", readme)
    assert {"docs/DESIGN.md", "docs/EVALUATION.md", "docs/RESULTS.md"} <= set(links)
    assert all((ROOT / link).is_file() for link in links), links
    for path in ROOT.rglob("*.py"):
        if not any(part.startswith(".") for part in path.relative_to(ROOT).parts) and path.name != "test_repository.py":
            assert "../shared" not in path.read_text(encoding="utf-8"), path
