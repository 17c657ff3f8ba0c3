"""Write the synthetic data shards that configs/three_hospitals.toml loads into its workers.

One shared ground-truth linear classifier labels points drawn around a different
centre at each hospital, so the shards are related but not identically
distributed (the usual federated-learning set-up). Same seed, same tensors.

    python examples/make_hospital_data.py                  # -> data/hospitals/*.pt
    python examples/make_hospital_data.py --out /tmp/h --seed 1 --samples 500

Per hospital ``x`` it writes ``hospital_x_data.pt`` (float32, samples x features)
and ``hospital_x_target.pt`` (int64 class labels, samples). Imports torch only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

HOSPITALS = ("hospital_a", "hospital_b", "hospital_c")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "data" / "hospitals"  # repo-relative, not cwd


def make_shards(
    out_dir: str | Path = DEFAULT_OUT,
    seed: int = 0,
    samples: int = 200,
    features: int = 8,
    classes: int = 2,
    hospitals: tuple[str, ...] = HOSPITALS,
) -> list[Path]:
    """Write ``<hospital>_data.pt`` and ``<hospital>_target.pt`` for each hospital; return the paths."""
    if samples < 1 or features < 1 or classes < 2:
        raise ValueError("need samples >= 1, features >= 1 and classes >= 2")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(features, classes, generator=generator)  # the ground truth all share
    written = []
    for index, hospital in enumerate(hospitals):
        centre = torch.zeros(features)
        centre[index % features] = 1.5  # each hospital sees a different region of feature space
        data = centre + torch.randn(samples, features, generator=generator)
        noise = 0.5 * torch.randn(samples, classes, generator=generator)  # some label noise
        target = (data @ weights + noise).argmax(dim=1)
        for suffix, tensor in (("data", data), ("target", target)):
            path = out / f"{hospital}_{suffix}.pt"
            torch.save(tensor.contiguous(), path)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"directory (default {DEFAULT_OUT})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=200, help="rows per hospital")
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--classes", type=int, default=2)
    args = parser.parse_args(argv)
    for path in make_shards(args.out, args.seed, args.samples, args.features, args.classes):
        print(path)


if __name__ == "__main__":
    main()
