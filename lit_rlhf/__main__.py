"""``lit-rlhf`` (and ``python -m lit_rlhf``): hands ``lit-rlhf label ...`` to the labeling app before anything imports
Lightning or torch, so the labeling server starts (and restarts after a crash) in a fraction of a second instead of
~10 s; every other command goes to :func:`lit_rlhf.cli.main`."""

from __future__ import annotations

import sys


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] == ["label"]:
        from lit_rlhf.label.cli import main as label_main

        return label_main(argv[1:])
    from lit_rlhf.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    main()
