"""The distributed TF1 benchmark (issue #11): 1 ps + 2 workers on localhost.

``python -m benchmarks.cluster`` starts three ``tf.distribute.Server``
processes (:mod:`benchmarks.cluster.task`): a parameter server and two
workers, between-graph replicated (``replica_device_setter`` puts the
variables and their updates on the ps; each worker runs its own copy of the
model in a ``MonitoredTrainingSession`` on its own server). The harness
(:mod:`benchmarks.cluster.harness`) runs blocks of steps on both workers at
once, the configurations interleaved round after round, and reports each
configuration's median step time and its ratio to the floor:

``none``
    no hook.
``floor``
    tfdbg's watches of every tensor (``debug_utils.watch_graph``) to a
    no-op ``memcbk://`` callback that shares no code with tfdump-fast
    (``benchmarks/floor/noop_callback.cc``), registered in every task: the
    cost of TensorFlow's debug ops alone.
``ours``
    ``tfdump_fast.DumpingDebugHook`` on each worker, ``tfdump_fast.serve()``
    on the ps: every tensor of every task captured.
``ours-separate-read``
    ``ours`` as it was before: the hook reads the global step with a
    ``Session.run`` of its own before every dumped run (on a cluster a
    master step reading the ps) instead of fetching it in the debugged run.
``ours-ps-off``
    the same hooks, but the workers treat the ps as not covered (what they
    do when the ps did not call ``serve()``): nothing is captured on the ps,
    and the worker-side nodes tied to its variables are not watched. Against
    ``ours`` it gives what capture on the ps costs the workers.
``ours-no-step-read``
    ``ours`` without any read of the global step (neither the in-run fetch
    nor a separate ``Session.run``): the step's metadata gets the call count
    instead. A profile configuration: it shows what recording the global
    step costs.
``ours-raw``, ``ours-null-sink`` (profile only, not run by default: ``--configs``)
    ``ours`` with the workers' writers storing tensors uncompressed
    (``codec="raw"``), or discarding them once captured (``sink="null"``:
    no hashing, compression or writing); the ps's ``serve()`` unchanged.
    They show what the writers' CPU costs the workers' steps.
``tfdbg``
    tfdbg's ``DumpingDebugHook`` (``file://``) on each worker; every task
    writes its own dumps.

Every process and directory is the harness's and is removed at the end.
"""
