"""``hbd assets``: show where each offline asset is, and prepare the SmolLM2 checkpoint."""

from __future__ import annotations

from .. import assets

FINDERS = {
    "MiniLM-L6 (BERT, hidden 384)": assets.minilm_path,
    "SmolLM2-135M GGUF": assets.smollm2_gguf,
    "Rotten Tomatoes sentences": assets.rotten_tomatoes_file,
    "SpamAssassin corpus": assets.spamassassin_dir,
}


def run(args) -> int:
    missing = 0
    finders = dict(FINDERS)
    if args.prepare:
        finders["SmolLM2-135M safetensors (converted)"] = assets.smollm2_path
    for name, finder in finders.items():
        try:
            print(f"ok       {name:<40} {finder()}")
        except assets.AssetNotFoundError as err:
            missing += 1
            print(f"MISSING  {name:<40} {err}")
    return 1 if missing else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("assets", help="Locate the offline models and corpora (and prepare SmolLM2).")
    parser.add_argument("--prepare", action="store_true",
                        help="Also convert SmolLM2 from GGUF to safetensors in the cache folder (once).")
    parser.set_defaults(func=run)
