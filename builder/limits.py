"""Every size limit Kiln puts on its input, in one place (README documents them).

Each one is far above what a real recipe needs and far below what would make Kiln slow, hang or
run out of memory on a hostile one; each refusal names the limit and where it was passed.
"""

from __future__ import annotations

# A recipe (or site.yaml, or defaults.yaml) file, in bytes; checked before reading, and only
# regular files are read (not devices or FIFOs).
MAX_FILE_BYTES = 1 << 20
# Nodes built from one YAML document, aliases and merge keys expanded (keys a merge looks at but
# does not copy count too). A recipe is a few hundred; the biggest sane one a few thousand.
MAX_NODES = 20_000
# Nesting of YAML collections (and of merges).
MAX_DEPTH = 64
# Levels of `extends` (a recipe extending a base extending a base...).
MAX_EXTENDS_DEPTH = 8
# Levels of `build.base` (a Packer image built on a recipe's image built on another's...).
MAX_BASE_DEPTH = 16
# Targets of one recipe: arches x releases x variants, counted before expansion.
MAX_TARGETS_PER_RECIPE = 1_000
# Targets of one run over a workspace (every recipe loaded together), counted the same way.
MAX_TARGETS_PER_WORKSPACE = 100_000
# Problems reported per file (a list of 5,000 bad items is one mistake, not 5,000 lines of output).
MAX_PROBLEMS_PER_FILE = 100
