"""Scripts a user runs (`python -m benchmarks.<name>`); each prints a table and the machine."""
