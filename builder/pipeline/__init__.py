"""The pipeline layer: what `kiln build`, `kiln plan`, the benchmarks and pipeline generation call.

graph.py  recipes -> Targets (expansion, capability refusals, dependencies, input digests)
plan.py   targets' ledger states, and the order to build in (dependencies first)
build.py  the per-target loop: skip, reuse, build, verify, publish, record; and the pure dry run
publish.py the gate, the route from a manifest to its kind's publisher, the ledger record
"""
