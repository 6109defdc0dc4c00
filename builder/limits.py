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

# --- Repo metadata (builder/rpm/repometa.py: `kiln rpm missing`, `build.source: {package, repo}`) ----
# Read from servers Kiln does not control: each value is far above a real distribution's (RHEL 9
# AppStream: ~20k packages, primary.xml ~8 MB gzipped and 20-60 MB decompressed; Fedora's
# Everything: ~75k packages, ~20 MB compressed) and far below what would hang Kiln or exhaust memory
# or disk. A breach is exit 4, naming the URL and the limit.

# repomd.xml as downloaded: a few KB in every real repo (it lists a dozen files).
MAX_REPOMD_BYTES = 1 << 20
# Primary metadata as downloaded (compressed): ~6x Fedora Everything's.
MAX_PRIMARY_DOWNLOAD_BYTES = 128 << 20
# Primary metadata decompressed: ~10x the largest real one. Parsing streams, so memory does not
# grow with it; the cap bounds the time a hostile repo can make Kiln spend (~10 s per 512 MiB).
MAX_PRIMARY_XML_BYTES = 512 << 20
# Decompressed / downloaded bytes. Real primary metadata compresses 5-15x (gzip) and up to ~25x (xz);
# a gzip bomb reaches ~1,000x. Checked once the output passes DECOMPRESSION_RATIO_FLOOR_BYTES: a
# small document may have any ratio (a repo of one package is mostly boilerplate).
MAX_DECOMPRESSION_RATIO = 100
DECOMPRESSION_RATIO_FLOOR_BYTES = 16 << 20
# Memory the xz decoder may take: its header names a dictionary size, up to 1.5 GiB in a hostile file;
# `xz -9` (the most any repo tool uses) needs 65 MiB.
MAX_XZ_DECODER_BYTES = 128 << 20
# The window the zstd decoder may allocate: a frame's header names it (up to 3.75 TiB in a hostile
# file); zstd's own default limit, and what `zstd --long=27` (the most any repo tool uses) needs.
MAX_ZSTD_WINDOW_BYTES = 128 << 20
# The longest run of decompressed bytes between two angle brackets (one tag, one attribute value or
# one text): the XML parser holds a whole token in memory. A real package's longest token is its
# description, a few KB.
MAX_XML_TOKEN_BYTES = 1 << 20
# Nesting of XML elements: repomd.xml and primary have 3 and 5 levels. (Elements Kiln does not read are
# not kept, so their number costs time only, bounded by the decompressed bytes; a tag's attributes are
# bounded by MAX_XML_TOKEN_BYTES.)
MAX_XML_DEPTH = 32
# Wall-clock time for one whole metadata download, reading and parsing included (not per read: a
# server that sends a byte every 20 s never trips a per-read timeout). 8 MB at 30 KB/s fits.
# $KILN_REPO_METADATA_DEADLINE_S overrides it (README: Configuration).
REPO_METADATA_DEADLINE_S = 300.0
# The longest wait for one read (and for the connection) inside that deadline.
HTTP_READ_TIMEOUT_S = 30.0
# A destination's answer to "is this target published here" (builder/publishers/publication_record.py):
# a record is a few hundred bytes (one line per package a rebuild made); the whole answer, connection
# included, within the deadline.
MAX_PUBLICATION_RECORD_BYTES = 256 << 10
DESTINATION_ANSWER_DEADLINE_S = 30.0
# A Glance candidate (a private upload not yet promoted) older than this is a killed publish's leftover,
# deleted by the next publish of its target; a younger one may be another job's upload in flight (two
# pipelines racing on one target), left alone.
STALE_CANDIDATE_S = 3600.0
# Redirects followed by one download (a mirror redirector, http -> https: one or two).
MAX_REDIRECTS = 5
# Fields of one package, in characters. rpm itself has no hard limit; real names are under ~100
# characters, versions and releases under ~80, hrefs (Packages/x/name-version-release.arch.rpm)
# under ~300. Epochs are rpm's uint32: at most 10 digits.
MAX_PACKAGE_NAME_CHARS = 256
MAX_PACKAGE_ARCH_CHARS = 32
MAX_VERSION_CHARS = 256
MAX_RELEASE_CHARS = 256
MAX_EPOCH_DIGITS = 10
MAX_HREF_CHARS = 1024
MAX_SOURCERPM_CHARS = 1024
# Provides or requires of one package (each list): real ones have up to a few thousand (Go and Perl
# packages providing every module); each entry's name is at most MAX_DEPENDENCY_CHARS.
MAX_DEPENDENCIES_PER_PACKAGE = 20_000
MAX_DEPENDENCY_CHARS = 1024
# Provides plus requires of a whole repo (bounds the memory its package list takes: ~60 bytes each).
MAX_DEPENDENCIES_PER_REPO = 4_000_000
# Packages in one repo's primary metadata: ~5x Fedora Everything.
MAX_REPO_PACKAGES = 400_000

# --- Downloads of packages (builder/rpm/source.py download: SRPMs, and binary RPMs from Kiln's repo) -
# The largest SRPMs (texlive, chromium) are a few GB; the cap keeps a hostile server from filling
# the disk. The deadline covers the whole download (8 GiB at ~2.5 MB/s).
MAX_PACKAGE_DOWNLOAD_BYTES = 8 << 30
PACKAGE_DOWNLOAD_DEADLINE_S = 3600.0
