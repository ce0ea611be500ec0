"""How far an entropy coder could go on the report's models: the coder's bytes beside other
code models and beside bounds no coder of its kind reaches, on the committed model files.

The file issue asked the coder for a quarter below the packed codes on MNIST's sc models;
notebook 07 reports how far below them it lands, beside the codes' order-0 entropy.  This
asks whether another model of the same codes would reach the quarter.  Every kept file of
``--method`` on ``--data`` (``REPORT/models/manifest.json``; the encoding variants are left
out) is reopened, and the codes of each group the coder sees (one layer's rows of one bit
depth, each row at the fewest bits its codes need, as a packed file stores it) are costed
five ways, each printed as its share below the packed codes (``b`` bits a code):

    coder     the coder's choice per group (uniform, a fitted table, or a Laplace or
              Gaussian per row), side information included: what a file spends on
              these groups (the encoder may also keep the learned depths' grouping
              where that is smaller, so a file spends at most this)
    adaptive  the cheaper, per group, of the coder's choice and a table learnt while coding
              (a Dirichlet prior, the best of three strengths; no table stored, its range
              and choice counted): achievable, not implemented
    order0    the group's empirical entropy, its table free: the floor of one table a group
              (:func:`entropy.group_report`: of a group too wide for one model, that of its
              high parts, plus the low bits raw)
    per_row   each row's own empirical entropy, every table free
    order1    the entropy of a code given the code before it in its row (clipped to -2..2),
              every table free

``order0``, ``per_row`` and ``order1`` pay nothing for what they learn, so they bound
coders of those kinds from below -- loosely: they are plug-in entropies, which fall far
below what any coder spends where a row or group holds few codes for its range (a row of
25 codes; the codes of a layer kept at 20 bits, nearly all distinct).  Read them as what
the codes would allow if their tables were known.  A group spanning more than
:data:`entropy.MAX_ALPHABET` codes is modelled by its high parts in ``coder`` and
``adaptive`` alike, the low bits raw (:func:`entropy.split`).  Then, per way, the mean share
and how many files reach a quarter.  Bit depths, exponents and other tensors are left out:
they are the same under every way.

    python benchmarks/coder_bounds.py --method sc --data mnist
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from scipy.special import gammaln

from sgsc.core import quant
from sgsc.fileformat import bitpack, entropy
from sgsc.fileformat.export import reopen_compressed

WAYS = ("coder", "adaptive", "order0", "per_row", "order1")
TARGET = 0.25  # the file issue's ask: a quarter below the packed codes
PRIORS = (0.05, 0.2, 0.5)  # Dirichlet strengths the adaptive model picks from (2 bits)
CONTEXT_CLIP = 2  # order1's context: the previous code, clipped to -2..2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--report", type=Path, default=Path("reports/paper"),
                        help="a report folder whose models/ to read (reports/paper)")
    parser.add_argument("--data", default="mnist", help="data set of the files (mnist)")
    parser.add_argument("--method", default="sc", help="method of the files (sc)")
    return parser.parse_args(argv)


def kept_files(report: Path, data: str, method: str) -> list[Path]:
    """The report's model files of one method and data set, encoding variants left out."""
    manifest = report / "models" / "manifest.json"
    if not manifest.is_file():
        raise SystemExit(f"error: {manifest} not found; pass --report, a folder with models/")
    entries = json.loads(manifest.read_text())
    files = [report / "models" / e["file"] for e in entries
             if e["data"] == data and e["method"] == method and "encoding" not in e]
    if not files:
        raise SystemExit(f"error: {manifest} keeps no {method} file of {data}")
    return files


def code_groups(path: Path) -> list[tuple[int, np.ndarray]]:
    """The codes of a file as a packed file stores them and the coder groups them: per
    layer and bit depth (each row at the fewest bits its codes need,
    :func:`bitpack.trimmed_widths`), that depth and the rows (rows x codes); zero-bit rows
    store nothing and are left out."""
    sc = reopen_compressed(path)
    weights = sc.raw_weights()
    groups = []
    for name, quantizer in sc.quantizers.items():
        codes, bits = quant.integer_codes(weights[name].detach(), quantizer.bit_depth,
                                          quantizer.exponent)
        rows = codes.reshape(codes.shape[0], -1).numpy().astype(np.int64)
        bits = bitpack.trimmed_widths(bits.numpy(), rows)
        groups += [(int(b), rows[bits == b]) for b in np.unique(bits) if b > 0]
    return groups


def _entropy_bits(values: np.ndarray) -> float:
    """Empirical entropy of ``values`` in bits, all of them (order 0, the table free)."""
    counts = np.unique(values, return_counts=True)[1]
    return float(-(counts * np.log2(counts / counts.sum())).sum())


def _range_header_bits(low: int, count: int) -> int:
    """The coder's per-group header: zigzag(low), the alphabet size and the model kind."""
    return 8 * (len(entropy.varint(entropy.zigzag(low))) + len(entropy.varint(count)) + 1)


def learnt_table_bits(codes: np.ndarray, strength: float) -> float:
    """Bits of ``codes`` (0 .. K-1, K = their largest + 1) coded one after another, each
    with probability (its count so far + ``strength``) / (codes so far + K ``strength``):
    a table learnt while coding, so none is stored.  The product of those probabilities
    depends on the counts alone; this is its closed form."""
    counts = np.bincount(codes.ravel()).astype(np.float64)
    k, n = len(counts), counts.sum()
    nats = (gammaln(n + k * strength) - gammaln(k * strength)
            - (gammaln(counts + strength) - gammaln(strength)).sum())
    return float(nats / math.log(2))


def adaptive_bits(group: np.ndarray) -> float:
    """The group under a learnt table (:func:`learnt_table_bits`) at the best of
    :data:`PRIORS`, its choice and the coder's range header counted."""
    low = int(group.min())
    shifted = group - low
    best = min(learnt_table_bits(shifted, a) for a in PRIORS)
    return best + _range_header_bits(low, int(shifted.max()) + 1) + math.log2(len(PRIORS))


def order1_bits(group: np.ndarray) -> float:
    """The group's codes' entropy given the code before each in its row (0 before the
    first), clipped to +-CONTEXT_CLIP: a table per context, every table free."""
    previous = np.concatenate([np.zeros((len(group), 1), np.int64), group[:, :-1]], axis=1)
    context = np.clip(previous, -CONTEXT_CLIP, CONTEXT_CLIP)
    return sum(_entropy_bits(group[context == c]) for c in np.unique(context))


def group_bits(group: np.ndarray, bits: int) -> dict[str, float]:
    """One group costed every way (and packed: ``bits`` a code)."""
    high, raw = entropy.split(group)  # as the coder models a group too wide for one model
    coder = min(entropy.model_bits(group).values())
    learnt = adaptive_bits(high) + raw * group.size
    order0 = entropy.group_report(group)["empirical_entropy_bits"]
    return {"packed": float(bits * group.size), "coder": coder,
            "adaptive": min(coder, learnt), "order0": order0,
            "per_row": sum(_entropy_bits(row) for row in group), "order1": order1_bits(group)}


def file_savings(path: Path) -> dict[str, float]:
    """Per way, the share of the file's packed codes it saves; and the packed bytes."""
    totals = dict.fromkeys(("packed", *WAYS), 0.0)
    for bits, group in code_groups(path):
        for way, value in group_bits(group, bits).items():
            totals[way] += value
    packed = totals.pop("packed")
    return {"packed_bytes": packed / 8} | {w: 1 - v / packed for w, v in totals.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    files = kept_files(args.report, args.data, args.method)
    print(f"{len(files)} {args.method} files of {args.data}; share below the packed codes")
    print(f"{'file':<30}{'packed B':>10}" + "".join(f"{w:>10}" for w in WAYS))
    rows = []
    for path in files:
        saved = file_savings(path)
        rows.append(saved)
        print(f"{path.name:<30}{saved['packed_bytes']:>10,.0f}"
              + "".join(f"{saved[w]:>10.1%}" for w in WAYS))
    print(f"{'mean':<40}" + "".join(f"{np.mean([r[w] for r in rows]):>10.1%}" for w in WAYS))
    print(f"{'at a quarter':<40}"
          + "".join(f"{sum(r[w] >= TARGET for r in rows):>10}" for w in WAYS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
