"""The node agent: changes recorded from the watches, the runner, the sync loop and its one
full-sync path, applying plans through the kernel adapters, and cleanup."""
