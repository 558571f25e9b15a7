"""The pure core: Kubernetes objects -> desired kernel state -> typed operations.

Nothing here performs I/O: no kernel adapter, process, socket or Kubernetes client is imported
(tests/test_layering.py checks every module of this folder). Values go in, values come out.
"""
