"""Draw docs/dropout_definitions.png: one realistic synthetic lid under both dropout definitions.

    python docs/make_dropout_figure.py [--seed 3] [--patient 2] [--dropout 0.3] [--size 740 350]

The lid is patient ``--patient`` of ``python -m utils.make_demo_data --seed SEED`` with its
dropout level drawn at ``--dropout``, first image; the panels are
:func:`utils.clinical.plots.dropout_definitions_figure`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.clinical.plots import dropout_definitions_figure  # noqa: E402
from utils.synthetic.generate import generate_patient, patient_rng  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=3, help="generator seed (default: 3)")
    ap.add_argument("--patient", type=int, default=2, help="patient number (default: 2)")
    ap.add_argument("--dropout", type=float, default=0.3, help="the patient's dropout level (default: 0.3)")
    ap.add_argument("--size", type=int, nargs=2, default=[740, 350], metavar=("W", "H"),
                    help="image size (default: 740 350)")
    ap.add_argument("--output", default=str(ROOT / "docs" / "dropout_definitions.png"), help="PNG to write")
    args = ap.parse_args()
    data = generate_patient(patient_rng(args.seed, args.patient), tuple(args.size), 2,
                            dropout_range=(args.dropout, args.dropout))
    title = (f"synthetic lid (make_demo_data --seed {args.seed}, patient {args.patient}, size {args.size[0]} x "
             f"{args.size[1]}); true dropout {data['dropout'][0]:.2f}")
    print(dropout_definitions_figure(data["masks"][0], data["lid_masks"][0], args.output, title))


if __name__ == "__main__":
    main()
