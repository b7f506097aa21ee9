"""Side-by-side speed and memory benchmarks."""
