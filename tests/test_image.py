"""The hand-built task image gets the tested versions: the Dockerfile installs pyproject's dependencies against
constraints.txt, and constraints.txt pins every package that install resolves, except torch and what torch pins."""

import re
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
# Left to torch: the base image's CUDA torch stays only if nothing pins it or what it pins exactly. torch 2.6.0 (the
# Dockerfile's base) requires sympy==1.13.1 (its nvidia-*/triton pins are absent here: the CPU wheel has none).
BASE_TORCH = "2.6.0"
LEFT_TO_TORCH = {"torch", "sympy"}


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503): ``typing_extensions`` == ``Typing-Extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def constraint_pins() -> dict[str, str]:
    """constraints.txt as {normalized name: version}; every line that is not a comment is ``name==version``."""
    pins = {}
    for number, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt:{number}: {line!r} is not a name==version pin"
            pins[normalize(name)] = version
    return pins


def project_dependencies() -> list[Requirement]:
    """pyproject's [project] dependencies that apply to this interpreter (markers evaluated)."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return [r for r in map(Requirement, deps) if r.marker is None or r.marker.evaluate()]


def docker_instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (instruction, arguments), continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def resolved_closure(requirements: list[Requirement]) -> dict[str, tuple[str, ...]]:
    """Every distribution ``requirements`` pull in, as installed here, with the chain that reaches it; torch is not
    followed (the base image brings its dependencies with it)."""
    seen: dict[str, set[str]] = {}
    chains: dict[str, tuple[str, ...]] = {}
    todo = [(r, ()) for r in requirements]
    while todo:
        req, chain = todo.pop()
        name = normalize(req.name)
        if name == "torch" or (name in seen and req.extras <= seen[name]):
            continue
        seen[name] = seen.get(name, set()) | req.extras
        chains.setdefault(name, (*chain, name))
        for text in metadata.requires(req.name) or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in req.extras or {""}):
                todo.append((sub, (*chain, name)))
    return chains


def test_the_dockerfile_copies_constraints_and_installs_with_them():
    steps = docker_instructions()
    installs = [i for i, (op, args) in enumerate(steps) if op == "RUN" and "pip install" in args]
    assert len(installs) == 1, "one pip install of the project"
    run = steps[installs[0]][1]
    assert re.search(r"(^|\s)(-c\s*|--constraint[=\s]+)constraints\.txt(\s|$)", run), run
    copied = {src for op, args in steps[: installs[0]] if op == "COPY" for src in args.split()[:-1]}
    assert {"pyproject.toml", "constraints.txt"} <= copied, f"copied before the install: {sorted(copied)}"
    base = next(args for op, args in steps if op == "FROM")
    assert base.startswith(f"pytorch/pytorch:{BASE_TORCH}-"), (
        f"new base image {base}: check which packages its torch pins exactly (pip install --dry-run --ignore-installed "
        f"-c constraints.txt -c <(echo torch==<its version>) .) and update LEFT_TO_TORCH and constraints.txt"
    )


def test_constraints_pin_every_dependency_but_torch_within_pyproject_ranges():
    pins = constraint_pins()
    assert not LEFT_TO_TORCH & pins.keys(), "a pin of torch or of what it pins would replace the image's CUDA torch"
    direct = [r for r in project_dependencies() if normalize(r.name) != "torch"]
    unpinned = sorted(r.name for r in direct if normalize(r.name) not in pins)
    assert unpinned == [], "pyproject dependencies without a pin in constraints.txt"
    outside = [f"{r.name}=={pins[normalize(r.name)]} ({r.specifier})" for r in direct
               if not r.specifier.contains(pins[normalize(r.name)], prereleases=True)]  # fmt: skip
    assert outside == [], "constraints.txt pins outside pyproject's ranges"
    # and every package they pull in (resolved as installed here, torch not followed) has its pin too
    missing = {name: " <- ".join(reversed(chain)) for name, chain in resolved_closure(direct).items()
               if name not in pins}  # fmt: skip
    assert missing == {}, "pulled in but not pinned in constraints.txt"
