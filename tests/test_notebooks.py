"""The Colab notebooks: committed clean, and each one runs top to bottom in smoke mode.

Execution: every notebook runs in a fresh `python3` kernel with nbclient, with
`KERAS_RESNET_SMOKE=1` (a few steps on a few hundred images), the real CIFAR-10
from `TFDS_DATA_DIR` (the `cifar10_dir` fixture skips when it is absent), the
checkout under test first on `PYTHONPATH`, a temporary working directory and
proxies pointing at a closed port, so any download attempt fails fast instead of
passing silently. Executed outputs are never written back to the repository.
"""

import json
import os
import pathlib
import re
import time

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = ["01_quickstart_cifar10.ipynb", "02_finetuning.ipynb",
            "03_export_and_serving.ipynb", "04_scaling.ipynb"]
COLAB_URL = "https://colab.research.google.com/github/keras-resnet-zoo/keras_resnet/blob/main/notebooks/{}"
SMOKE_LINE = 'SMOKE = os.environ.get("KERAS_RESNET_SMOKE", "0") == "1"'
CELL_TIMEOUT = 300  # seconds per cell; a smoke notebook takes well under two minutes in all
OFFLINE_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, connections fail at once
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _ids(paths):
    return [p.stem for p in paths]


def test_the_four_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == EXPECTED


# === Committed notebooks are clean ===

@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)  # raises on an invalid notebook
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.get("outputs") == [], f"cell {i} of {path.name} has stored outputs"
            assert cell.get("execution_count") is None, (
                f"cell {i} of {path.name} has execution_count={cell.execution_count}: "
                "commit notebooks without running them (python notebooks/build_notebooks.py)")
        assert not cell.get("attachments"), f"cell {i} of {path.name} has attachments"
    ids = [c.get("id") for c in nb.cells]
    assert len(set(ids)) == len(ids), f"duplicate cell ids in {path.name}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_has_badge_and_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown"
    badge = f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({COLAB_URL.format(path.name)})"
    assert badge in first.source, f"{path.name}: the first cell needs the Open in Colab badge"
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    assert tagged[0].cell_type == "code" and SMOKE_LINE in tagged[0].source
    # The install cell only installs on Colab; locally the installed package is imported.
    installs = [c for c in nb.cells if c.cell_type == "code" and "pip install" in c.source]
    assert len(installs) == 1 and '"google.colab" in sys.modules' in installs[0].source
    text = "\n".join(c.source for c in nb.cells)
    assert "../shared" not in text, f"{path.name} must not point into ../shared"


def test_notebooks_match_their_generator():
    """The committed notebooks are exactly what `build_notebooks.py` writes."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_notebooks", NOTEBOOK_DIR / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    built = module.build_all()
    assert sorted(built) == EXPECTED
    for name, nb in built.items():
        committed = (NOTEBOOK_DIR / name).read_text()
        assert nbformat.writes(nb) + "\n" == committed, (
            f"{name} differs from build_notebooks.py: edit the generator and run "
            "`python notebooks/build_notebooks.py`")


# === Every notebook runs top to bottom (smoke mode, offline) ===

@pytest.fixture
def kernel_env(monkeypatch, tmp_path, cifar10_dir):
    """The environment the kernel inherits (KernelManager copies os.environ at start)."""
    pythonpath = os.environ.get("PYTHONPATH")
    env = {
        "KERAS_RESNET_SMOKE": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TFDS_DATA_DIR": cifar10_dir,
        "KERAS_RESNET_WORK_DIR": str(tmp_path / "work"),
        "KERAS_HOME": str(tmp_path / "keras_home"),
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "PYTHONPATH": str(ROOT) + (os.pathsep + pythonpath if pythonpath else ""),
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
    }
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env[name] = OFFLINE_PROXY
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _error_report(nb):
    """The failing cell's source and traceback, for a readable pytest failure."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                tb = ANSI.sub("", "\n".join(out.get("traceback", [])))
                # A long traceback ends with the frames that matter and the exception: keep its tail.
                return f"--- cell ---\n{cell.source}\n--- error ---\n{tb[-10000:]}"
    return ""


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_top_to_bottom(path, tmp_path, kernel_env):
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)  # executed in memory, never written back
    run_dir = tmp_path / "cwd"
    run_dir.mkdir()
    before = sorted(p.name for p in NOTEBOOK_DIR.iterdir())
    client = NotebookClient(nb, kernel_name="python3", timeout=CELL_TIMEOUT,
                            resources={"metadata": {"path": str(run_dir)}})
    start = time.time()
    try:
        client.execute()
    except CellExecutionError as exc:
        pytest.fail(f"{path.name} failed:\n{_error_report(nb) or exc}", pytrace=False)
    seconds = time.time() - start
    print(f"{path.name}: {seconds:.0f} s")

    # Every code cell ran, in order, once; no error outputs anywhere.
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    assert not _error_report(nb)
    # Smoke mode is what ran, and it wrote only to its temporary directories.
    assert any("SMOKE = True" in "".join(o.get("text", "")) for c in nb.cells
               for o in c.get("outputs", []) if o.get("output_type") == "stream"), \
        "the notebook must print its mode (SMOKE = True/False)"
    assert sorted(p.name for p in NOTEBOOK_DIR.iterdir()) == before
    assert not (tmp_path / "keras_home" / "models").exists(), "weights were downloaded"
    assert not (tmp_path / "keras_home" / "datasets").exists(), "a dataset was downloaded"
    assert (tmp_path / "work").is_dir(), "outputs belong under KERAS_RESNET_WORK_DIR"
    # Figures really rendered inline (matplotlib was not switched to a headless backend).
    outputs = [o for c in nb.cells for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} showed no figure"
    blank = [o for o in outputs if str(o.get("data", {}).get("text/plain", "")).startswith("<Figure")
             and "image/png" not in o.get("data", {})]
    assert not blank, f"{path.name}: a figure was displayed without its image (matplotlib backend switched?)"
    json.dumps(nb)  # outputs are serialisable
