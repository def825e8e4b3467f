"""The run harness every experiment and the sweep use, and the statistics of results.

    program      command-line programs: one-line user errors (exit 2), --help (exit 0), a run's exit status
    record       the run record and directory claims (no JAX: the sweep imports it), exact float names
    files        atomic writes, JSON records, metrics.jsonl (truncated on resume) and TensorBoard
    checkpoints  Orbax checkpoints: atomic, keep-N, restore with fallback past unreadable steps
    harness      `Run`: claim, restore, log, save, stop on signals / time budget / non-finite values
    statistics   Student-t intervals and paired differences

Submodules are imported by name (nothing is re-exported here), so importing `record` does not start JAX.
"""
