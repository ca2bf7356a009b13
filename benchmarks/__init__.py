"""purebp's benchmarks: purebp against JAX autodiff and PyTorch eager, run by hand.

``python -m benchmarks`` (from the repository root; ``--help`` for the options) times the
workloads of ``benchmarks.workloads`` and writes ``docs/benchmarks.md``. Modules: ``workloads``
(sizes, models and ops as purebp and autodiff), ``torch_eager`` (the PyTorch versions; needs the
``bench`` extra), ``timing`` (interleaved timing, compile time), ``report`` (the page) and
``runner`` (the command line).
"""
