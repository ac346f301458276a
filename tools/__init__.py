"""Developer tools: benchmarks, profiler, capture report, memory checks, load fuzzer, CUDA check, runtime set-up.

Each tool is a module of this package, run from the repository root::

    python -m tools.<name> --help

(``tools.benchmark``, ``tools.profile_step``, ``tools.capture_report``, ``tools.memory_check``,
``tools.lora_memory``, ``tools.fuzz_artifacts``, ``tools.cuda_check``, ``tools.old_runtime_venv``,
``tools.artifact_digest``). Tools share code as modules of this package (``from tools.benchmark import
mlp``), and ``tools.capture_report`` reads the test zoos as ``tests.capture.zoo`` and ``tests.hf.hf_zoo``;
tests import a tool the same way (pytest puts the repository root on the path: ``pythonpath`` in
pyproject.toml). ``setup_runtimes.sh`` is a shell script: ``tools/setup_runtimes.sh``.
"""
