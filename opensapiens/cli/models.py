"""``opensapiens models``: the official checkpoints this package knows, and where each comes from."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list official model names and their Hugging Face files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints import official_names
    from ..checkpoints.hub import BUNDLED, BUNDLED_NAMES, local_dir

    rows = official_names()
    width = max(len(r.name) for r in rows)
    for r in rows:
        print(f"{r.name:<{width}}  {r.url}")
    print(f"{BUNDLED_NAMES[0]:<{width}}  bundled with this package ({BUNDLED.name}): the multi-task demo model, "
          "trained on synthetic people (docs/bundled_model.md)")
    print(f"\nAppend -torchscript or -bfloat16 to a v1 name for the official lite exports. Files are looked up in "
          f"{local_dir()} (OPENSAPIENS_CHECKPOINTS), then the Hugging Face cache, then downloaded.")
    return 0
