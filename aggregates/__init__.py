"""The Order domain: the example that ledger's tests, demo and benchmarks use."""
