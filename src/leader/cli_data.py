"""``leader data ...`` commands: dataset indexing and phantom generation."""

from __future__ import annotations

from pathlib import Path


def _cmd_index(a) -> int:
    from leader.datasets.pack import index_root  # noqa: PLC0415

    m = index_root(a.root, check_files=not a.no_check_files)
    m.save(a.out)
    print(f"{len(m)} images -> {a.out}")
    print(m.df["dataset"].value_counts().to_string())
    return 0


def _cmd_phantoms(a) -> int:
    from leader.phantoms import make_phantom_pack  # noqa: PLC0415

    m = make_phantom_pack(a.out, n_images=a.n, size=a.size, seed=a.seed)
    print(f"{len(m)} phantoms -> {Path(a.out) / 'manifest.parquet'}")
    return 0


def register(sub, groups) -> None:
    """Add ``data index`` and ``data phantoms`` to the ``data`` command group."""
    data = groups["data"]
    i = data.add_parser("index", help="index a dataset folder into a Parquet manifest")
    i.add_argument("--root", required=True)
    i.add_argument("--out", required=True)
    i.add_argument("--no-check-files", action="store_true", help="metadata only; never touch image files")
    i.set_defaults(func=_cmd_index)
    ph = data.add_parser("phantoms", help="generate chest phantoms with known landmarks and lesion boxes")
    ph.add_argument("--out", required=True)
    ph.add_argument("--n", type=int, default=60)
    ph.add_argument("--size", type=int, default=512)
    ph.add_argument("--seed", type=int, default=0)
    ph.set_defaults(func=_cmd_phantoms)

