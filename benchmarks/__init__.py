"""The benchmark suite: shmbus against the queues people would otherwise use.

`benchmarks/run.py` is the entry point (`python benchmarks/run.py --help`); `harness`
runs one measurement in real processes, `systems` holds one small adapter per system,
`workloads` the events they carry and `verify` the receivers' order check.
"""
