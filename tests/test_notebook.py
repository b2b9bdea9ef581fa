"""``examples/seed_cnn_mnist1d.ipynb`` executed in a real Jupyter kernel.

The notebook is the original library's ``conv.ipynb`` recipe with only the imports
changed. It runs in an IPython kernel started by nbclient (the ``python3`` kernel of
ipykernel), so ``Optim.SGD_eval(online_plot=True)`` takes its notebook path: one image
output, redrawn in place after every epoch through ``update_display_data`` messages.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("mnist1d")
pytest.importorskip("sklearn")
pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

_backends = os.environ.get("NNX_TEST_BACKENDS", "").strip()
if _backends and "numpy" not in {b.strip() for b in _backends.split(",")}:
    pytest.skip("the notebook runs on the numpy backend", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "seed_cnn_mnist1d.ipynb"
EPOCHS = 3  # the notebook says 10; fewer keep the suite fast, the checks are the same


class RecordingClient(nbclient.NotebookClient):
    """Keeps every iopub message type per cell, to see how the live plot was drawn."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.messages: list[tuple[int, str, dict[str, Any]]] = []

    def process_message(self, msg: dict[str, Any], cell: Any, cell_index: int) -> Any:
        self.messages.append((cell_index, msg["msg_type"], msg["content"]))
        return super().process_message(msg, cell, cell_index)


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, RecordingClient]:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and "epochs = 10" in c.source]
    assert len(cells) == 1, "the training cell sets epochs = 10"
    cells[0].source = cells[0].source.replace("epochs = 10", f"epochs = {EPOCHS}")
    env = os.environ.copy()
    # the kernel imports this checkout's nnx, not an installed one
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["NNX_BACKEND"] = "numpy"
    workdir = tmp_path_factory.mktemp("notebook")
    client = RecordingClient(
        nb,
        timeout=900,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("MPLBACKEND", raising=False)
        client.execute()
    return nb, client


def _cell_index(nb: Any, text: str) -> int:
    hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and text in c.source]
    assert len(hits) == 1, text
    return hits[0]


def test_runs_in_a_real_ipython_kernel(executed):
    nb, client = executed
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors, errors
    kinds = {t for _, t, _ in client.messages}
    assert {"execute_input", "status", "display_data"} <= kinds
    # IPython's ZMQ shell ran the code: nnx saw a notebook (its bars went to the cells)
    assert "update_display_data" in kinds


def test_live_plot_is_updated_in_place(executed):
    nb, client = executed
    i = _cell_index(nb, "online_plot=True")
    images = [
        o
        for o in nb.cells[i].outputs
        if o.output_type == "display_data" and "image/png" in o.get("data", {})
    ]
    assert len(images) == 1, "one live figure, not one per epoch"
    shown = [c for idx, t, c in client.messages if idx == i and t == "display_data"]
    updates = [c for idx, t, c in client.messages if idx == i and t == "update_display_data"]
    display_ids = {c["transient"]["display_id"] for c in shown + updates}
    assert len(shown) == 1 and len(display_ids) == 1
    assert len(updates) == EPOCHS - 1, "redrawn after every epoch but the first"
    # the output left in the notebook is the last redraw (a valid PNG)
    png = base64.b64decode(images[0]["data"]["image/png"])
    assert png.startswith(b"\x89PNG")
    assert images[0]["data"]["image/png"] == updates[-1]["data"]["image/png"]
    assert images[0]["data"]["image/png"] != shown[0]["data"]["image/png"]


def test_history_plots_and_confusion_matrix(executed):
    nb, _ = executed
    table = nb.cells[_table_cell(nb)].outputs
    html = [o["data"]["text/html"] for o in table if "text/html" in o.get("data", {})]
    assert html, "the DataFrame is shown as a table"
    for col in ("epoch", "loss_train", "loss_test", "score_train", "score_test"):
        assert col in html[0]
    plots = nb.cells[_cell_index(nb, "ConfusionMatrixDisplay.from_predictions")].outputs
    assert any("image/png" in o.get("data", {}) for o in plots)


def _table_cell(nb: Any) -> int:
    hits = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source == "result_df"]
    assert len(hits) == 1
    return hits[0]


def test_it_learns(executed):
    nb, _ = executed
    out = nb.cells[_cell_index(nb, "held_out = ")].outputs
    text = "".join(o.get("text", "") for o in out if o.output_type == "stream")
    accuracy = float(text.rsplit(":", 1)[1])
    assert accuracy > 0.25, text  # 10 classes: chance is 0.1
