"""Running experiments: the layer above the library.

* :mod:`.config` -- the run configuration, presets and overrides; :mod:`.registry` -- name -> constructor for
  algorithms, models and task families; :mod:`.presets` -- one small file per preset;
* :mod:`.experiment` -- a config wired into task sampler, model, algorithm and optimizer;
* :mod:`.runner` -- ``train``/``evaluate_run``: the host loop, checkpoints, logs, the run folder;
* :mod:`.checkpoint`, :mod:`.lock`, :mod:`.interrupt` -- Orbax checkpoints, the run-folder lock,
  SIGINT/SIGTERM handling;
* :mod:`.logs`, :mod:`.tensorboard`, :mod:`.wandb_logger` -- metrics logs, progress and sinks;
* :mod:`.plots`, :mod:`.export` -- figures and exported parameters;
* :mod:`.search` -- command-line grid/random search over configs;
* :mod:`.cli` -- the ``jmeta`` command.

The library (``jmeta.tasks``, ``models``, ``inner``, ``algorithms``, ``implicit``, ``ops``, ``train``,
``learned_optim``, ``rl``) never imports this package (tests/test_import_graph.py checks it). Submodules
are imported on use; importing this package loads none of them.
"""
