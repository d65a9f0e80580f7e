"""Static PNG plots of a run, viewable offline (DVC's default HTML loads Vega from a CDN).

* :func:`loss_plot`: the distillation loss per step (``loss.csv`` of ``sdd erase``), raw and smoothed;
* :func:`rates_plot`: per-concept presence rates of the base and the erased model
  (``rates.csv`` of ``sdd evaluate``), as grouped horizontal bars;
* :func:`cost_curve_plot`: a red team's attack success against the attacker's budget, erased vs base.

Only matplotlib (Agg backend) and the standard library: the ``plots`` stage of ``dvc.yaml`` runs
``sdd plots`` without loading torch. The PNGs carry no timestamp, so equal inputs give equal bytes.
"""

from __future__ import annotations

from pathlib import Path

from sdd.layout import read_losses, read_rates
from sdd.storage import atomic_path

LOSS_PNG, RATES_PNG = "loss.png", "rates.png"
_PNG_METADATA = {"Software": None}  # no matplotlib version in the file: bytes depend on the data only


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over up to ``window`` values."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _figure(width: float, height: float, panels: int = 1):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(1, panels, figsize=(width, height), dpi=100, squeeze=panels == 1)


def _save(plt, fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata=_PNG_METADATA)
    plt.close(fig)
    return path


def loss_plot(losses: list[tuple[int, float]], path: Path) -> Path:
    """Loss per optimizer step (thin) and its moving average (thick) as a PNG."""
    plt, fig, ax = _figure(6.4, 3.6)
    if losses:
        steps, values = zip(*losses, strict=True)
        window = max(1, len(values) // 20)
        ax.plot(steps, values, color="tab:blue", alpha=0.35 if window > 1 else 1.0, linewidth=1, label="loss")
        if window > 1:
            ax.plot(steps, smooth(list(values), window), color="tab:blue", linewidth=2,
                    label=f"moving average ({window} steps)")
        ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("step")
    ax.set_ylabel("SDD loss (MSE)")
    ax.set_title("distillation loss")
    ax.grid(alpha=0.3)
    return _save(plt, fig, path)


def rates_plot(rates: dict[str, dict[str, float]], path: Path) -> Path:
    """Base vs erased presence rate per concept (horizontal bars, rates in %) as a PNG."""
    concepts = list(rates)
    plt, fig, ax = _figure(6.4, max(2.4, 1.0 + 0.6 * len(concepts)))
    height = 0.38
    for k, (model, color) in enumerate((("base", "tab:gray"), ("erased", "tab:red"))):
        ys = [i + (k - 0.5) * height for i in range(len(concepts))]
        xs = [100 * rates[c].get(model, float("nan")) for c in concepts]
        bars = ax.barh(ys, xs, height=height, color=color, label=model)
        ax.bar_label(bars, labels=[f"{x:.1f} %" if x == x else "n/a" for x in xs], padding=3, fontsize=8)
    ax.set_yticks(range(len(concepts)), concepts)
    ax.invert_yaxis()
    ax.set_xlim(0, 110)
    ax.set_xlabel("presence rate on the concept's eval prompts (%)")
    ax.set_title("erasure: base vs erased model")
    ax.legend(loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    return _save(plt, fig, path)


def cost_curve_plot(concept: str, curves: dict[str, dict], path: Path) -> Path:
    """One panel per attack: ASR (%) against the attacker's budget (gradient steps, log scale), for the
    erased and the base model, as the red team's ``cost_curves`` record them."""
    plt, fig, axes = _figure(4.2 * len(curves), 3.4, panels=len(curves))
    for ax, (attack, curve) in zip(axes.flat if len(curves) > 1 else [axes], curves.items(), strict=True):
        for model, color in (("base", "tab:gray"), ("erased", "tab:red")):
            points = curve.get(model) or {}
            budgets = sorted(int(b) for b in points)  # metrics.json sorts its keys as text: "1000" < "300"
            rates = [100 * (points[str(b)]["rate"] or 0.0) for b in budgets]
            if budgets:
                ax.plot(budgets, rates, marker="o", color=color, label=f"{model} model")
                lows = [100 * points[str(b)]["ci95"][0] for b in budgets]
                highs = [100 * points[str(b)]["ci95"][1] for b in budgets]
                ax.fill_between(budgets, lows, highs, color=color, alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_ylim(0, 105)
        ax.set_xlabel(f"attacker's budget ({curve.get('unit', 'steps')})")
        ax.set_ylabel("attack success rate (%)")
        ax.set_title(f"{concept}: {attack.replace('_', ' ')}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path)


def write_plots(loss_csv: Path, rates_csv: Path, out_dir: Path) -> dict[str, Path]:
    """``out_dir/loss.png`` from ``loss_csv`` and ``out_dir/rates.png`` from ``rates_csv``."""
    out_dir = Path(out_dir)
    losses, rates = read_losses(loss_csv), read_rates(rates_csv)
    return {"loss": loss_plot(losses, out_dir / LOSS_PNG), "rates": rates_plot(rates, out_dir / RATES_PNG)}
