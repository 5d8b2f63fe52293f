"""Scripts that produce the mixed-precision and sensitivity numbers quoted in the notes (RESULTS.md)."""
