"""Developer tools for dsqc (benchmarks); not part of the installed package."""
