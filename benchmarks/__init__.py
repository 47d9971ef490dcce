"""The benchmark suite: shmbus against the queues people would otherwise use.

`benchmarks/run.py` is the entry point (`python benchmarks/run.py --help`); its
docstring says what is measured and which module does what.
"""
