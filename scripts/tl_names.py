"""Write circuitd/models/tl_names.txt: TransformerLens's model names and aliases, the list that
``CIRCUITD_HUB_MODELS=*tl`` allows. The API reads the file so that it never imports TransformerLens;
run this after upgrading TransformerLens (tests/circuitd/test_trust.py fails until the file matches).

    .venv/bin/python scripts/tl_names.py
"""

from __future__ import annotations

from importlib.metadata import version

from circuitd.models.ids import TL_NAMES_FILE
from circuitd.models.loading import tl_model_names


def main() -> None:
    header = (
        f"# TransformerLens {version('transformer_lens')}: official model names and aliases, less those\n"
        "# that need remote code. Written by scripts/tl_names.py; do not edit.\n"
    )
    TL_NAMES_FILE.write_text(header + "".join(f"{name}\n" for name in tl_model_names()))
    print(f"{TL_NAMES_FILE}: {len(tl_model_names())} names")


if __name__ == "__main__":
    main()
