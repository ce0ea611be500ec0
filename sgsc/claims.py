"""The papers' claims, made testable, and their verdicts from a profile's metrics files.

Each :class:`Claim` names a per-seed quantity measured by the notebooks (01: MNIST runs,
bit depths and per-class accuracy; 02: the character transformer; 03: the sweep) and a
threshold.  :func:`assess_claims` turns the tables into the claims table of
``05_paper_claims``; :func:`size_at_accuracy` answers the headline question "how small
at >= 99.0 % test accuracy?".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sgsc.report import METRICS, load_table, mean_std

VERDICTS = ("supported", "inconclusive", "not supported", "not measured")


@dataclass(frozen=True)
class Claim:
    """A claim of the papers, made testable: a per-seed measurement and a threshold.

    The verdict compares mean ± std (over seeds) with ``threshold``: *supported* when the
    whole interval is on the claimed side, *not supported* when it is wholly on the other
    side, *inconclusive* when it straddles the threshold.
    """

    id: str
    source: str
    claim: str
    measurement: str
    threshold: float
    higher_is_better: bool

    @property
    def criterion(self) -> str:
        side = ">" if self.higher_is_better else "<"
        return f"mean ± std {side} {self.threshold:g}"


SCNN = "Cséfalvay & Imber 2023 (SCNN)"
SGSC = "Zbeeb et al. 2025 (SGSC)"
CLAIMS = (
    Claim("scnn-size", SCNN, "Self-compression makes the network several times smaller.",
          "sc: float32 size / packed size (x); 4 = an 8-bit copy", 4.0, True),
    Claim("scnn-accuracy", SCNN, "It keeps the float model's accuracy.",
          "sc: float test accuracy - sc test accuracy (0.01 = 1 point)", 0.01, False),
    Claim("scnn-channels", SCNN, "Bit depths reach zero, so whole channels are removed.",
          "sc: channels removed from the packed file", 0.0, True),
    Claim("sgsc-accuracy", SGSC, "Safety guidance gives higher test accuracy than plain "
          "self-compression.", "sgsc - sc test accuracy, same seed", 0.0, True),
    Claim("sgsc-size", SGSC, "It does so at about the same size.",
          "sgsc size / sc size - 1, same seed", 0.05, False),
    Claim("sgsc-worst-class", SGSC, "It protects the hardest cases: the worst class is "
          "better kept.", "sgsc - sc accuracy of the worst class, same seed", 0.0, True),
    Claim("sgsc-feedback", SGSC, "The feedback controller restores precision during "
          "training.", "sgsc: feedback events per run", 0.0, True),
    Claim("sgsc-vs-float", SGSC, "The compressed model is more accurate than the "
          "unquantized one.", "sgsc - float test accuracy, same seed", 0.0, True),
    Claim("sgsc-reduction", SGSC, "It makes the model about 60 % smaller (or more).",
          "sgsc: 1 - packed size / float32 size", 0.6, True),
    Claim("sgsc-variance", SGSC, "Safety guidance lowers the variance of self-compression "
          "over seeds.", "03 sweep, per setting: sgsc - sc std over seeds of test accuracy",
          0.0, False),
    Claim("sgsc-stability", SGSC, "It makes training more stable: accuracy jumps less "
          "between epochs.", "03 sweep, per setting and seed: sgsc - sc mean |change| of "
          "val accuracy per epoch", 0.0, False),
    Claim("sgsc-text", SGSC, "It compresses a character-level transformer with a small "
          "loss increase.", "sgsc test loss - float test loss (nats per character)",
          0.05, False),
)


def verdict(mean: float | None, std: float | None, claim: Claim) -> str:
    """One of :data:`VERDICTS` for a measurement of ``claim`` (see :class:`Claim`)."""
    if mean is None:
        return "not measured"
    low, high = mean - (std or 0.0), mean + (std or 0.0)
    if claim.higher_is_better:
        return "supported" if low > claim.threshold else (
            "not supported" if high <= claim.threshold else "inconclusive")
    return "supported" if high < claim.threshold else (
        "not supported" if low >= claim.threshold else "inconclusive")


def _same_seed(rows: Sequence[dict], column: str, a: str, b: str,
            combine=lambda x, y: x - y) -> list[float]:
    """Per seed present in both: ``combine(method a's value, method b's value)``."""
    by = {(r["method"], r["seed"]): r.get(column) for r in rows}
    seeds = sorted({r["seed"] for r in rows})
    return [combine(by[(a, s)], by[(b, s)]) for s in seeds
            if by.get((a, s)) is not None and by.get((b, s)) is not None]


def _column(rows: Sequence[dict], method: str, column: str) -> list[float]:
    return [float(r[column]) for r in rows if r["method"] == method
            and r.get(column) is not None]


def claim_measurements(tables: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Per claim id, the per-seed values measured from the notebooks' tables:
    ``image_runs`` (01 runs), ``bit_depths`` and ``per_class_runs`` (01), ``text_runs``
    (02) and ``sweep_runs`` (03).  Missing tables give empty measurements."""
    runs = tables.get("image_runs", [])
    bits = tables.get("bit_depths", [])
    classes = tables.get("per_class_runs", [])
    text = tables.get("text_runs", [])
    sweep = tables.get("sweep_runs", [])
    removed: dict[int, int] = {}
    for row in bits:
        if row["method"] == "sc":
            removed[row["seed"]] = removed.get(row["seed"], 0) + int(row["removed"])
    worst = [{"method": r["method"], "seed": r["seed"],
              "worst": min(v for k, v in r.items() if k.startswith("class_"))}
             for r in classes]
    return {
        "scnn-size": _column(runs, "sc", "compression"),
        "scnn-accuracy": _column(runs, "sc", "test_acc_drop"),
        "scnn-channels": [float(v) for v in removed.values()],
        "sgsc-accuracy": _same_seed(runs, "test_acc", "sgsc", "sc"),
        "sgsc-size": _same_seed(runs, "storage_bytes", "sgsc", "sc", lambda x, y: x / y - 1),
        "sgsc-worst-class": _same_seed(worst, "worst", "sgsc", "sc"),
        "sgsc-feedback": _column(runs, "sgsc", "feedback_events"),
        "sgsc-vs-float": _same_seed(runs, "test_acc", "sgsc", "float"),
        "sgsc-reduction": [1 - 1 / c for c in _column(runs, "sgsc", "compression") if c],
        "sgsc-variance": _sweep_spread(sweep, "test_acc"),
        "sgsc-stability": _sweep_paired(sweep, "epoch_swing"),
        "sgsc-text": _column(text, "sgsc", "test_loss_rise"),
    }


def assess_claims(tables: dict[str, list[dict]]) -> list[dict]:
    """The claims table: claim · measurement mean ± std (n seeds) · criterion · verdict."""
    measured = claim_measurements(tables)
    rows = []
    for claim in CLAIMS:
        values = measured.get(claim.id, [])
        mean, std = mean_std(values)
        rows.append({"id": claim.id, "source": claim.source, "claim": claim.claim,
                     "measurement": claim.measurement, "value_mean": mean, "value_std": std,
                     "n": len(values), "criterion": claim.criterion,
                     "verdict": verdict(mean, std, claim)})
    return rows


def claim_tables(report_dir: str | os.PathLike[str]) -> dict[str, list[dict]]:
    """The tables :func:`assess_claims` reads, from a report folder (absent: empty)."""
    names = {"image_runs": "01_mnist_cnn__runs", "bit_depths": "01_mnist_cnn__bit_depths",
             "per_class_runs": "01_mnist_cnn__per_class_runs",
             "text_runs": "02_char_transformer__runs", "sweep_runs": "03_sweeps__runs"}
    folder = Path(report_dir) / METRICS
    return {key: load_table(report_dir, name) if (folder / f"{name}.json").exists() else []
            for key, name in names.items()}


def _sweep_groups(rows: Sequence[dict], column: str) -> dict[str, dict[str, dict]]:
    """Sweep rows by setting, then method, then seed: the value of ``column``."""
    groups: dict[str, dict[str, dict]] = {}
    for row in rows:
        if row["method"] in ("sc", "sgsc") and row.get(column) is not None:
            groups.setdefault(row["setting"], {}).setdefault(row["method"], {})[
                row["seed"]] = float(row[column])
    return groups


def paired_spread(rows: Sequence[dict], column: str) -> list[dict]:
    """Per setting (``axis=value``, rows of :func:`sgsc.studies.sweep_rows`) run by sc and
    sgsc with two seeds or more each: the standard deviation over seeds of ``column`` for
    both, side by side, and whether sgsc's is lower."""
    out = []
    for setting, by_method in _sweep_groups(rows, column).items():
        sc, sgsc = by_method.get("sc", {}), by_method.get("sgsc", {})
        if len(sc) > 1 and len(sgsc) > 1:
            sc_std = mean_std(list(sc.values()))[1]
            sgsc_std = mean_std(list(sgsc.values()))[1]
            out.append({"setting": setting, "n": min(len(sc), len(sgsc)),
                        f"sc_{column}_std": sc_std, f"sgsc_{column}_std": sgsc_std,
                        "sgsc_lower": sgsc_std < sc_std})
    return out


def _sweep_spread(rows: Sequence[dict], column: str) -> list[float]:
    """Per setting of :func:`paired_spread`: sgsc std - sc std of ``column``."""
    return [r[f"sgsc_{column}_std"] - r[f"sc_{column}_std"]
            for r in paired_spread(rows, column)]


def _sweep_paired(rows: Sequence[dict], column: str) -> list[float]:
    """Per setting and seed run by both: sgsc - sc of ``column``."""
    out = []
    for by_method in _sweep_groups(rows, column).values():
        sc, sgsc = by_method.get("sc", {}), by_method.get("sgsc", {})
        out += [sgsc[seed] - sc[seed] for seed in sorted(set(sc) & set(sgsc))]
    return out


def size_at_accuracy(rows: Sequence[dict], target: float = 0.99) -> list[dict]:
    """Per method (01 runs): mean test accuracy and packed size over seeds, whether the
    mean reaches ``target``, and which of those that do is the smallest."""
    table = []
    for method in dict.fromkeys(r["method"] for r in rows):
        members = [r for r in rows if r["method"] == method]
        acc, acc_std = mean_std(_column(members, method, "test_acc"))
        size, size_std = mean_std(_column(members, method, "storage_bytes"))
        table.append({"method": method, "n": len(members), "test_acc_mean": acc,
                      "test_acc_std": acc_std, "storage_bytes_mean": size,
                      "storage_bytes_std": size_std, "target": target,
                      "reaches_target": acc is not None and acc >= target})
    sizes = [r["storage_bytes_mean"] for r in table if r["reaches_target"]]
    for row in table:
        row["smallest_at_target"] = bool(sizes) and row["reaches_target"] and \
            row["storage_bytes_mean"] == min(sizes)
    return table


# The project's own targets (README): what a compressed model must reach to count.
IMAGE_TARGET = {"test_acc": 0.99, "storage_bytes": 10_000, "entropy_coded_bytes": 5_000}
TEXT_TARGET = {"test_loss_rise": 0.02, "float_fraction": 0.10}


def project_targets(tables: dict[str, list[dict]]) -> list[dict]:
    """Per compressed method, mean over seeds against the project's targets:
    image data -- test accuracy >= 99.0 % in a packed file <= 10,000 bytes (<= 5,000
    entropy-coded); text -- test loss within 0.02 nats of float at <= 10 % of its size."""
    rows = []
    image, text = tables.get("image_runs", []), tables.get("text_runs", [])
    for method in ("sc", "sgsc"):
        members = [r for r in image if r["method"] == method]
        if members:
            means = {k: mean_std(_column(members, method, k))[0] for k in IMAGE_TARGET}
            met = all(v is not None for v in means.values()) and \
                means["test_acc"] >= IMAGE_TARGET["test_acc"] and \
                means["storage_bytes"] <= IMAGE_TARGET["storage_bytes"] and \
                means["entropy_coded_bytes"] <= IMAGE_TARGET["entropy_coded_bytes"]
            rows.append({"data": members[0]["data"], "method": method, "n": len(members),
                         **{f"{k}_mean": v for k, v in means.items()}, "met": met})
        members = [r for r in text if r["method"] == method]
        if members:
            rise = mean_std(_column(members, method, "test_loss_rise"))[0]
            fraction = mean_std([1 / c for c in _column(members, method, "compression")
                                 if c])[0]
            met = rise is not None and fraction is not None and \
                rise <= TEXT_TARGET["test_loss_rise"] and \
                fraction <= TEXT_TARGET["float_fraction"]
            rows.append({"data": members[0]["data"], "method": method, "n": len(members),
                         "test_loss_rise_mean": rise, "float_fraction_mean": fraction,
                         "met": met})
    return rows
