"""``python -m lit_rlhf.world --out DIR --seed N``."""

from lit_rlhf.world.build import main

if __name__ == "__main__":
    main()
