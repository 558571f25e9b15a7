"""bench/README.md from the benchmarks' outputs: figures read from them (figures), the aims
judged (aims), the plots (plots) and the document (readme)."""
