"""Format and hub tools: commands that move the pipeline's files in and out of other tools' formats (TRL,
Math-Shepherd, ProcessBench datasets; rollouts from elsewhere; plain transformers models; the Hugging Face Hub).
Each is a Config, a ``run(config)`` and a ``main(argv)`` like a stage.
"""
