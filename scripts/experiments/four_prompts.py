"""Write the learning tests' four training prompts (the first of each category by hash) to a file."""
import sys

from rewardiff.shapes.prompts import CATEGORIES, _hash01, split_prompts

open(sys.argv[1], "w").write("".join(sorted(split_prompts(c)[0], key=_hash01)[0] + "\n" for c in CATEGORIES))
