"""Print graft's requirements for a set of extras, one a line, for an image's dependency layer.

    python3 docker/requirements.py serve,litert
    python3 docker/requirements.py build,litert --swap tensorflow=tensorflow-cpu --build-system

Reading them from pyproject.toml lets an image install its dependencies in a layer
that changes only when pyproject.toml does, before graft's code is copied in.
--swap replaces a distribution by another with the same version range (the CPU-only
TensorFlow wheel, onnxruntime-gpu); --build-system adds what building graft's own wheel
needs, so it installs later without a network. Standard library only (Python 3.11+).
"""

import argparse
import re
import tomllib


def requirements(project: dict, extras: list[str]) -> list[str]:
    optional = project.get("optional-dependencies", {})
    found, todo, seen = list(project.get("dependencies", [])), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"error: no extra '{extra}' in pyproject.toml; it has {', '.join(optional)}")
        seen.add(extra)
        for requirement in optional[extra]:
            nested = re.fullmatch(rf"{project['name']}\[(.+)\]", requirement)
            if nested:
                todo.extend(nested.group(1).split(","))
            else:
                found.append(requirement)
    return list(dict.fromkeys(found))


def swap(requirement: str, swaps: dict[str, str]) -> str:
    name = re.match(r"[A-Za-z0-9._-]+", requirement).group(0)
    return swaps.get(name, name) + requirement[len(name):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", help="comma-separated extras, or '' for the base install")
    parser.add_argument("--swap", action="append", default=[], metavar="NAME=OTHER")
    parser.add_argument("--build-system", action="store_true", help="add the build backend's requirements")
    parser.add_argument("--pyproject", default="pyproject.toml")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        pyproject = tomllib.load(f)
    swaps = dict(item.split("=", 1) for item in args.swap)
    extras = [e.strip() for e in args.extras.split(",") if e.strip()]
    found = requirements(pyproject["project"], extras)
    if args.build_system:
        found += pyproject.get("build-system", {}).get("requires", [])
    for requirement in found:
        print(swap(requirement, swaps))


if __name__ == "__main__":
    main()
