"""Lets the wrong code in (issue 25): Keras releases with published safe_mode
bypasses are excluded, every `.keras` load in the package says safe_mode=True,
and the docs say TF's cluster traffic is unauthenticated."""

import ast
import configparser
import pathlib
import re

import keras

import keras_resnet

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = pathlib.Path(keras_resnet.__file__).resolve().parent  # the code under test

# Published Keras advisories where loading a crafted `.keras` file with
# safe_mode=True still runs code or touches files, and the release that fixed
# each (the advisories' own "patched" versions).
KERAS_SAFE_MODE_FIXES = {
    "CVE-2025-1550": (3, 9, 0),    # config.json names arbitrary modules/functions
    "CVE-2025-8747": (3, 11, 0),   # safe_mode bypass via allowed-module gadgets
    "CVE-2025-9906": (3, 11, 0),   # config.json calls enable_unsafe_deserialization()
    "CVE-2025-9905": (3, 11, 3),   # .h5/.hdf5 models ignored safe_mode
    "CVE-2026-1462": (3, 13, 2),   # TFSMLayer loads an external SavedModel
    "GHSA-hqp4-2352-xf5r": (3, 14, 0),  # path traversal extracting archives
}
FLOOR = max(KERAS_SAFE_MODE_FIXES.values())


def _keras_floor(requirement_lines):
    for line in requirement_lines:
        found = re.match(r"\s*keras\s*(?:>=|==|~=)\s*([\d.]+)", line)
        if found:
            return tuple(int(p) for p in found.group(1).split("."))
    raise AssertionError("no keras floor in " + repr(requirement_lines))


def test_install_requires_excludes_keras_releases_with_safe_mode_bypasses():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    floor = _keras_floor(config["options"]["install_requires"].splitlines())
    assert floor >= FLOOR, f"setup.cfg allows keras {floor}, below {FLOOR} (safe_mode bypasses fixed there)"
    pinned = _keras_floor((ROOT / "requirements.txt").read_text().splitlines())
    assert pinned >= FLOOR
    assert tuple(int(p) for p in keras.__version__.split(".")[:3]) >= FLOOR


def _calls(tree, name):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if called == name:
                yield node


def test_every_model_load_in_the_package_says_safe_mode_true():
    """A `load_model` call without an explicit safe_mode=True (or any
    safe_mode=False / enable_unsafe_deserialization) fails this test."""
    loads, offenders = 0, []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        where = lambda node: f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"  # noqa: E731
        for node in _calls(tree, "load_model"):
            loads += 1
            safe = [k for k in node.keywords if k.arg == "safe_mode"]
            if not (safe and isinstance(safe[0].value, ast.Constant) and safe[0].value.value is True):
                offenders.append(where(node))
        offenders += [where(node) for node in _calls(tree, "enable_unsafe_deserialization")]
        offenders += [where(node) for node in ast.walk(tree) if isinstance(node, ast.keyword)
                      and node.arg == "safe_mode" and not (isinstance(node.value, ast.Constant)
                                                          and node.value.value is True)]
    assert loads >= 5 and not offenders, offenders


def test_docs_say_cluster_traffic_is_unauthenticated():
    import keras_resnet.distribute as distribute

    readme = " ".join((ROOT / "README.md").read_text().split())
    assert "gRPC cluster traffic is not authenticated or encrypted" in readme
    assert "neither authenticated nor encrypted" in " ".join(distribute.__doc__.split())
