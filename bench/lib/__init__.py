"""What the benchmarks share: the cluster generator, the kernel benchmarks' main, running
against another tree's ipvsproxy."""
