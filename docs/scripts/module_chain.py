"""Figure: a Sequential as a chain of modules, forward (top) and backward (bottom).

Writes docs/_generated/module_chain.png. The chain drawn is the one the diagram's
caption describes (the simple CNN of the original library); its shapes are computed by running nnx on a batch, so
the figure cannot drift from the code.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the working tree's nnx

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

import nnx  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "_generated" / "module_chain.png"


def shapes_through(net: nnx.Sequential, x) -> list[tuple[int, ...]]:
    out = [tuple(x.shape)]
    for module in net:
        x = module(x)
        out.append(tuple(x.shape))
    return out


def main() -> None:
    nnx.manual_seed(0)
    net = nnx.Sequential(
        nnx.Conv1D(3, 1, 32),
        nnx.MaxPool1D(2, 2),
        nnx.Flatten(),
        nnx.Linear(19 * 32, 100),
        nnx.ReLU(),
        nnx.Linear(100, 10),
    )
    shapes = shapes_through(net, nnx.asarray(np.zeros((32, 40, 1))))
    names = [type(m).__name__ for m in net] + ["CELogSoftmax"]
    has_params = [bool(m._parameters) for m in net] + [False]

    n = len(names)
    fig, ax = plt.subplots(figsize=(12, 4.4), dpi=150)
    ax.set_xlim(-1.5, n * 2.0 - 0.4)
    ax.set_ylim(-2.55, 2.35)
    ax.axis("off")
    box_w, box_h, y0 = 1.42, 1.1, 0.0
    forward_c, backward_c, grad_c = "#1f6fb4", "#c0392b", "#2d8a4e"

    def box(i: int) -> tuple[float, float]:
        return i * 2.0 + 0.6, y0

    # input X
    ax.text(-1.05, y0, r"$X = z^0$", ha="center", va="center", fontsize=13)
    for i, (name, params) in enumerate(zip(names, has_params, strict=True)):
        cx, cy = box(i)
        is_loss = i == n - 1
        face = "#fdf2e9" if is_loss else ("#eaf2fb" if params else "#f4f6f7")
        ax.add_patch(
            FancyBboxPatch(
                (cx - box_w / 2, cy - box_h / 2),
                box_w,
                box_h,
                boxstyle="round,pad=0.04,rounding_size=0.12",
                facecolor=face,
                edgecolor="#34495e",
                linewidth=1.2,
            )
        )
        label = f"loss\n{name}" if is_loss else f"$M^{{{i + 1}}}$\n{name}"
        ax.text(cx, cy + 0.14, label, ha="center", va="center", fontsize=11.5, linespacing=1.3)
        if not is_loss:
            ax.text(
                cx,
                cy - 0.33,
                str(shapes[i + 1]),
                ha="center",
                va="center",
                fontsize=10,
                color="#555",
            )
        else:
            ax.text(
                cx,
                cy - 0.33,
                r"$L = \sum_i \ell_i$",
                ha="center",
                va="center",
                fontsize=10,
                color="#555",
            )
        if params:
            h = i + 1
            ax.annotate(
                "backward_update_gradient\n"
                + rf"$\nabla_{{w^{{{h}}}}} L$ += "
                + rf"$(\partial z^{{{h}}}/\partial w^{{{h}}})^\top \delta^{{{h}}}$",
                xy=(cx, cy - box_h / 2 - 0.02),
                xytext=(cx, cy - 2.05),
                ha="center",
                va="center",
                fontsize=10,
                color=grad_c,
                arrowprops={"arrowstyle": "->", "color": grad_c, "lw": 1.0},
            )

    def arrow(x1, x2, y, color, rad):
        ax.add_patch(
            FancyArrowPatch(
                (x1, y),
                (x2, y),
                arrowstyle="-|>",
                mutation_scale=12,
                color=color,
                lw=1.4,
                connectionstyle=f"arc3,rad={rad}",
            )
        )

    # forward arrows (top), backward arrows (bottom)
    for i in range(n):
        cx, cy = box(i)
        left = cx - box_w / 2 - 0.05
        prev_right = box(i - 1)[0] + box_w / 2 + 0.05 if i > 0 else -0.65
        arrow(prev_right, left, cy + 0.3, forward_c, -0.35)
        ax.text(
            (prev_right + left) / 2,
            cy + 0.78,
            f"$z^{{{i}}}$",
            ha="center",
            color=forward_c,
            fontsize=14,
        )
        arrow(left, prev_right, cy - 0.3, backward_c, -0.35)
        ax.text(
            (prev_right + left) / 2,
            cy - 0.95,
            rf"$\delta^{{{i}}}$",
            ha="center",
            color=backward_c,
            fontsize=14,
        )

    ax.text(-1.45, 2.1, "forward: $z^h = M^h(z^{h-1})$", color=forward_c, fontsize=13)
    ax.text(
        -1.45,
        1.7,
        r"backward_delta: $\delta^{h-1} = (\partial z^h / \partial z^{h-1})^\top"
        r"\delta^h$,  starting from $\delta^H = \partial L / \partial \hat y$"
        " (Loss.backward)",
        color=backward_c,
        fontsize=13,
    )
    ax.text(
        -1.45,
        -2.45,
        "blue boxes hold parameters (weight, bias); grey ones have none",
        fontsize=10,
        color="#555",
    )
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
